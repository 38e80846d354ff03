"""The example backend passes mlrig's storage contract suite, like every backend must."""

import pytest
from mlrig_plugin_example.storage import ShardedFolderStorage

from mlrig.testing.storage import StorageContract


class TestShardedStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return ShardedFolderStorage.from_options({"root": str(tmp_path)}, where="storage.sharded")
