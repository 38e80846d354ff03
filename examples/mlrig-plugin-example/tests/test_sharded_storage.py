"""The example backend passes mlrig's storage contract suite, like every backend must."""

import pytest
from mlrig_plugin_example.storage import ShardedFolderStorage

from mlrig.testing.storage import StorageContract


class TestShardedStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return ShardedFolderStorage.from_options({"root": str(tmp_path)}, where="storage.sharded")

    @pytest.fixture
    def broken_storage(self, tmp_path):
        """A root below a regular file: nothing can be created there."""
        (tmp_path / "a-file").write_text("not a folder")
        root = tmp_path / "a-file" / "shards"
        return ShardedFolderStorage.from_options({"root": str(root)}, where="storage.sharded")
