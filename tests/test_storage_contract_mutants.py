"""The storage contract suite catches broken backends: each mutant below keeps most
promises but breaks one, and running the whole suite against it must fail exactly there.

The mutants run with pytester, the way a plugin author runs the suite; the honest local
backend runs the same way as the control (everything passes)."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

MUTANTS = textwrap.dedent(
    '''
    import contextlib
    import io
    import re

    import pytest

    from mlrig.plugins.storage_local import LocalStorage
    from mlrig.testing.storage import StorageContract


    class WholeObjects(LocalStorage):
        """Buffers each object whole in memory while writing and while reading."""

        @contextlib.contextmanager
        def open_write(self, key):
            buffer = io.BytesIO()
            yield buffer
            with super().open_write(key) as out:
                out.write(buffer.getvalue())

        def open_read(self, key):
            with super().open_read(key) as handle:
                return io.BytesIO(handle.read())


    class LikePrefix(LocalStorage):
        """Lists with SQL LIKE semantics: _ and % are wildcards, case is ignored."""

        def list(self, prefix=""):
            pattern = "".join(
                "." if c == "_" else ".*" if c == "%" else re.escape(c) for c in prefix
            )
            every = super().list("")
            return iter([k for k in every if re.match(pattern, k, re.IGNORECASE)])


    class CheckNeverFails(LocalStorage):
        """check() says all is well wherever it points."""

        def check(self):
            return None


    def make(cls, root):
        return cls.from_options({"root": str(root)}, where="storage.mutant")


    def broken(cls, tmp_path):
        (tmp_path / "a-file").write_bytes(b"not a folder")
        return make(cls, tmp_path / "a-file" / "root")


    class TestSUBJECT(StorageContract):
        @pytest.fixture
        def storage(self, tmp_path):
            return make(SUBJECT, tmp_path / "store")

        @pytest.fixture
        def broken_storage(self, tmp_path):
            return broken(SUBJECT, tmp_path)
    '''
)


def _run(pytester: pytest.Pytester, subject: str) -> tuple[set[str], int]:
    """Run the whole contract against ``subject``; return the failed tests and passes."""
    pytester.makepyfile(**{f"test_{subject.lower()}": MUTANTS.replace("SUBJECT", subject)})
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=600)
    outcomes = result.parseoutcomes()
    failed = {
        line.split("::")[-1].split(" ")[0].split("[")[0]
        for line in result.outlines
        if line.startswith("FAILED ")
    }
    return failed, outcomes.get("passed", 0)


def test_the_honest_local_backend_passes(pytester: pytest.Pytester) -> None:
    failed, passed = _run(pytester, "LocalStorage")
    assert failed == set() and passed >= 40  # the whole suite ran


def test_a_backend_holding_whole_objects_fails(pytester: pytest.Pytester) -> None:
    failed, _ = _run(pytester, "WholeObjects")
    assert failed == {
        "test_streaming_write_holds_bounded_memory",
        "test_streaming_read_holds_bounded_memory",
    }


def test_a_sql_like_prefix_listing_fails(pytester: pytest.Pytester) -> None:
    failed, _ = _run(pytester, "LikePrefix")
    assert failed == {"test_list_prefix_is_literal_and_case_sensitive"}


def test_a_check_that_never_fails_fails(pytester: pytest.Pytester) -> None:
    failed, _ = _run(pytester, "CheckNeverFails")
    assert failed == {"test_check_fails_where_the_store_cannot_work"}


def test_a_contract_class_without_broken_storage_is_told_what_to_add(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_no_broken=textwrap.dedent(
            """
            import pytest
            from mlrig.plugins.storage_local import LocalStorage
            from mlrig.testing.storage import StorageContract

            class TestNoBroken(StorageContract):
                @pytest.fixture
                def storage(self, tmp_path):
                    return LocalStorage.from_options({"root": str(tmp_path)}, where="s")
            """
        )
    )
    result = pytester.runpytest_subprocess(
        "-q", "-p", "no:cacheprovider", "-k", "check_fails", timeout=300
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*give the contract class a `broken_storage` fixture*"])
