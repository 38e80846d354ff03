"""Model serving: deployments (the control plane) and the data plane that answers
predictions (``mlrig serve``, embedded in ``mlrig server``). See docs/serving.md."""
