"""``mlrig.load_model``: URIs, the local registry and a server's, the sha256 cache, and
predictions equal to the framework's own (sklearn here; torch and Keras heavy-marked)."""

from __future__ import annotations

import numpy as np
import pytest

import mlrig
from mlrig.errors import NotFoundError, ValidationError
from mlrig.testing.fixtures import make_platform
from mlrig.testing.serving import (
    ACTOR,
    breast_cancer_data,
    breast_cancer_estimator,
    register_breast_cancer_model,
)
from mlrig.tracking.loading import ModelURI, parse_model_uri

ID = "0b7f6a3e-8d1c-4c55-9a1e-3f2b8c9d0e11"


@pytest.fixture
def platform(tmp_path):
    """A platform whose stage moves need no approval (so a test can stage a version)."""
    plat = make_platform(tmp_path / "home", registry={"approval_required_for": []})
    yield plat
    plat.close()


@pytest.fixture
def two_versions(platform):
    """Model ``bc``: version 1 (variant 0) is the champion, version 2 (variant 1) is in
    production."""
    first = register_breast_cancer_model(platform, "bc", variant=0)
    second = register_breast_cancer_model(platform, "bc", variant=1)
    platform.lifecycle.set_alias("bc", "champion", first["version"], actor=ACTOR)
    platform.lifecycle.transition("bc", second["version"], "production", actor=ACTOR)
    return first, second


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/churn@champion", ModelURI(model="churn", alias="champion")),
        ("models:/churn/Production", ModelURI(model="churn", stage="production")),
        ("models:/churn/staging", ModelURI(model="churn", stage="staging")),
        ("models:/churn/3", ModelURI(model="churn", version="3")),
        ("models:/churn/v2.1", ModelURI(model="churn", version="v2.1")),
        ("models:/churn/latest", ModelURI(model="churn", version="latest")),
        ("models:/churn", ModelURI(model="churn", version="latest")),
        (ID, ModelURI(version_id=ID)),
        (f"models:/{ID.upper()}", ModelURI(version_id=ID)),
    ],
)
def test_uris_parse(uri, expected):
    assert parse_model_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "churn",
        "runs:/abc/model",
        "models:/",
        "models:/a/b/c",
        "models:/@x",
        "models:/a@",
        "models:/a@b/1",
        "models:/a@b@c",
    ],
)
def test_bad_uris_say_what_is_accepted(uri):
    with pytest.raises(ValidationError, match=r"expected models:/NAME@ALIAS"):
        parse_model_uri(uri)


def test_local_versions_by_alias_stage_number_and_id(platform, two_versions, tmp_path):
    first, second = two_versions
    x = breast_cancer_data().x
    cache = tmp_path / "cache"
    for uri, version, variant in [
        ("models:/bc@champion", first, 0),
        ("models:/bc/Production", second, 1),
        ("models:/bc/1", first, 0),
        ("models:/bc/latest", second, 1),
        (second["id"], second, 1),
    ]:
        model = mlrig.load_model(uri, platform=platform, cache_dir=cache)
        assert (model.name, model.version) == ("bc", version["version"])
        assert model.version_id == version["id"]
        own = breast_cancer_estimator(variant)
        np.testing.assert_array_equal(model.predict(x), own.predict(x))
        # auto may pick the ONNX export (float32 inside): probabilities agree closely
        np.testing.assert_allclose(model.predict_proba(x), own.predict_proba(x), atol=1e-5)


def test_the_sklearn_runtime_gives_the_estimators_own_answers(platform, two_versions, tmp_path):
    model = mlrig.load_model(
        "models:/bc@champion", runtime="sklearn", platform=platform, cache_dir=tmp_path
    )
    own = breast_cancer_estimator(0)
    x = breast_cancer_data().x
    assert model.runtime == "sklearn"
    np.testing.assert_array_equal(model.predict(x), own.predict(x))
    np.testing.assert_array_equal(model.predict_proba(x), own.predict_proba(x))
    assert model.classes == [0, 1]
    assert "bc version 1 (sklearn)" in repr(model)


def test_the_cache_downloads_once_and_again_when_a_file_is_damaged(
    platform, two_versions, tmp_path
):
    cache = tmp_path / "cache"
    first = mlrig.load_model("models:/bc/1", platform=platform, cache_dir=cache)
    files = len(first.metadata["artifacts"])
    assert first.downloaded == files >= 3  # model.joblib, model.onnx, the manifest
    again = mlrig.load_model("models:/bc@champion", platform=platform, cache_dir=cache)
    assert again.downloaded == 0 and again.path == first.path

    native = first.path / "model.joblib"
    native.write_bytes(b"not a model")  # a hard link: the blob is damaged too
    repaired = mlrig.load_model(
        "models:/bc/1", runtime="sklearn", platform=platform, cache_dir=cache
    )
    assert repaired.downloaded == 1
    x = breast_cancer_data().x
    np.testing.assert_array_equal(repaired.predict(x), breast_cancer_estimator(0).predict(x))


def test_what_does_not_exist_is_a_not_found_naming_it(platform, two_versions, tmp_path):
    with pytest.raises(NotFoundError, match="has no alias 'gold' \\(aliases: champion\\)"):
        mlrig.load_model("models:/bc@gold", platform=platform, cache_dir=tmp_path)
    with pytest.raises(NotFoundError, match="has no version in stage 'staging'"):
        mlrig.load_model("models:/bc/Staging", platform=platform, cache_dir=tmp_path)
    with pytest.raises(NotFoundError, match="has no version or alias '7'"):
        mlrig.load_model("models:/bc/7", platform=platform, cache_dir=tmp_path)
    with pytest.raises(NotFoundError, match=f"no model version with id '{ID}'"):
        mlrig.load_model(ID, platform=platform, cache_dir=tmp_path)
    with pytest.raises(NotFoundError, match=r"model 'nope'"):
        mlrig.load_model("models:/nope/1", platform=platform, cache_dir=tmp_path)


def test_from_a_server_into_the_cache(platform, two_versions, live_server, make_token, tmp_path):
    first, second = two_versions
    token = make_token("ada", "viewer")["Authorization"].removeprefix("Bearer ")
    cache = tmp_path / "cache"
    x = breast_cancer_data().x
    with mlrig.Client(live_server, token=token) as client:
        model = mlrig.load_model("models:/bc@champion", client=client, cache_dir=cache)
        assert model.version_id == first["id"] and model.downloaded == len(first["artifacts"])
        np.testing.assert_array_equal(model.predict(x), breast_cancer_estimator(0).predict(x))
        by_id = mlrig.load_model(second["id"], client=client, cache_dir=cache, runtime="sklearn")
        np.testing.assert_array_equal(
            by_id.predict_proba(x), breast_cancer_estimator(1).predict_proba(x)
        )
        again = mlrig.load_model("models:/bc/1", client=client, cache_dir=cache)
        assert again.downloaded == 0
        staged = mlrig.load_model("models:/bc/production", client=client, cache_dir=cache)
        assert staged.version_id == second["id"] and staged.downloaded == 0


@pytest.mark.heavy
@pytest.mark.parametrize("runtime", ["auto", "torch"])
def test_a_torch_version_answers_as_the_network_does(platform, tmp_path, runtime):
    from mlrig.testing.serving import (
        breast_cancer_torch_model,
        register_torch_model,
        torch_predict_proba,
    )

    register_torch_model(platform, "bc-torch")
    model = mlrig.load_model(
        "models:/bc-torch/1", runtime=runtime, platform=platform, cache_dir=tmp_path
    )
    x = breast_cancer_data().x32
    own = torch_predict_proba(breast_cancer_torch_model(0), x)
    np.testing.assert_allclose(model.predict_proba(x), own, atol=1e-5)
    np.testing.assert_array_equal(model.predict(x), own.argmax(axis=1))


@pytest.mark.heavy
@pytest.mark.parametrize("runtime", ["auto", "tensorflow"])
def test_a_keras_version_answers_as_the_network_does(platform, tmp_path, runtime):
    from mlrig.testing.serving import (
        breast_cancer_keras_model,
        keras_predict_proba,
        register_tf_model,
    )

    register_tf_model(platform, "bc-keras")
    model = mlrig.load_model(
        "models:/bc-keras/latest", runtime=runtime, platform=platform, cache_dir=tmp_path
    )
    x = breast_cancer_data().x32
    own = keras_predict_proba(breast_cancer_keras_model(0), x)
    np.testing.assert_allclose(model.predict_proba(x), own, atol=1e-5)
    np.testing.assert_array_equal(model.predict(x), own.argmax(axis=1))


def test_without_a_platform_or_client_it_reads_where_tracking_goes(
    platform, two_versions, live_server, make_token, tmp_path, monkeypatch
):
    from mlrig.tracking import stores

    first, second = two_versions
    x = breast_cancer_data().x
    monkeypatch.setattr(stores, "_configured", None)
    home = tmp_path / "home"  # the platform fixture's config, database and artifacts
    monkeypatch.setenv("MLRIG_CONFIG", str(home / "mlrig.toml"))
    monkeypatch.setenv("MLRIG_DATABASE__URL", f"sqlite:///{home / 'mlrig.db'}")
    monkeypatch.setenv("MLRIG_STORAGE__LOCAL__ROOT", str(home / "artifacts"))
    monkeypatch.delenv("MLRIG_URL", raising=False)
    local = mlrig.load_model("models:/bc/Production", cache_dir=tmp_path / "a")
    assert local.version_id == second["id"]

    token = make_token("ada", "viewer")["Authorization"].removeprefix("Bearer ")
    monkeypatch.setenv("MLRIG_URL", live_server)
    monkeypatch.setenv("MLRIG_TOKEN", token)
    monkeypatch.setenv("MLRIG_DATABASE__URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    remote = mlrig.load_model("models:/bc@champion", cache_dir=tmp_path / "b")
    assert remote.version_id == first["id"] and remote.downloaded > 0
    np.testing.assert_array_equal(remote.predict(x), breast_cancer_estimator(0).predict(x))


# --- hostile URIs and a damaged cache or version (clear errors, no deep tracebacks) -------


@pytest.mark.parametrize(
    ("uri", "error", "said"),
    [
        ("models:/bc\x00/1", ValidationError, "NUL"),
        ("models:/../x", NotFoundError, "no model '..'"),
        ("models:/bc/../1", ValidationError, "invalid model URI"),
        ("models:/bc@nope", NotFoundError, "has no alias 'nope' (aliases: champion)"),
        ("models:/bc/Staging", NotFoundError, "no version in stage 'staging'"),
        ("models:/bc/" + "9" * 30, NotFoundError, "has no version"),
    ],
)
def test_hostile_uris_are_clear_errors(platform, two_versions, tmp_path, uri, error, said):
    with pytest.raises(error, match=None) as caught:
        mlrig.load_model(uri, platform=platform, cache_dir=tmp_path / "cache")
    assert said in caught.value.message


def test_a_cache_folder_that_is_a_file_is_one_clear_error(platform, two_versions, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")  # was a NotADirectoryError from deep inside
    with pytest.raises(mlrig.errors.ConfigError, match="cannot use the model cache") as caught:
        mlrig.load_model("models:/bc@champion", platform=platform, cache_dir=cache)
    assert "cache_dir" in caught.value.message


def test_a_damaged_model_file_is_one_clear_error(platform, tmp_path):
    version = platform.registry.create_version(
        "broken",
        files={"model.joblib": b"garbage, not a pickle"},
        actor=ACTOR,
        create_model=True,
        framework="sklearn",
    )
    with pytest.raises(ValidationError, match="runtime 'sklearn' cannot load broken version 1"):
        mlrig.load_model(version["id"], platform=platform, cache_dir=tmp_path / "cache")
