"""Revision scripts, one per schema change, named ``NNNN_<slug>.py`` with revision ``NNNN``."""
