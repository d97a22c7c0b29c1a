import pytest

from medxpert_utils.core import config
from medxpert_utils.core.config import ConfigError
from medxpert_utils.core.paths import PROJECT_ROOT, resolve_run_dir

PROFILES = ["demo", "smoke", "mimic_hf", "mimic_cxr_jpg", "iu_xray"]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_validates_and_names_its_run(profile, isolated_dirs):
    cfg = config.load(f"params/{profile}.yaml")
    assert cfg.params.profile == profile
    assert cfg.run_dir == isolated_dirs / profile


def test_reference_profile_carries_the_reference_recipe():
    cfg = config.load("mimic_hf")
    assert cfg.clip.model == "openai/clip-vit-base-patch32"
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr) == (16, 3, 5e-6)
    assert cfg.train.loss == "infonce"
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.7, 0.15, 0.15)


def test_demo_is_default_and_offline():
    cfg = config.load()
    assert cfg.params.profile == "demo"
    assert cfg.data.source == "demo" and cfg.clip.model == "tiny" and cfg.captions.model == "tiny"


def test_overrides_set_nested_keys():
    cfg = config.load("demo", overrides={"train.lr": 1e-5, "data.split.train": 0.8, "data.split.val": 0.1,
                                          "data.split.test": 0.1})
    assert cfg.train.lr == 1e-5
    assert cfg.data.split.train == 0.8


@pytest.mark.parametrize("overrides, key", [
    ({"train.lrr": 1.0}, "train.lrr"),
    ({"nonsense": 1}, "nonsense"),
    ({"train.lr": -1}, "train.lr"),
    ({"train.loss": "hinge"}, "train.loss"),
    ({"data.split.train": 0.9}, "data.split"),
    ({"index.type": "annoy"}, "index.type"),
])
def test_bad_keys_and_values_fail_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        config.load("demo", overrides=overrides)
    message = str(info.value)
    assert f"'{key}" in message
    assert "\n" not in message


def test_override_into_a_value_is_rejected():
    with pytest.raises(ConfigError, match="is a value"):
        config.load("demo", overrides={"seed.x": 1})


def test_missing_params_file_says_what_to_pass():
    with pytest.raises(ConfigError, match="params file not found"):
        config.load("params/nope.yaml")


def test_invalid_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)


def test_run_accepts_name_or_path(tmp_path, isolated_dirs):
    assert config.load("demo", run="mine").run_dir == isolated_dirs / "mine"
    assert config.load("demo", run=str(tmp_path / "elsewhere")).run_dir == tmp_path / "elsewhere"
    assert resolve_run_dir("./rel").is_absolute()


def test_params_hash_changes_with_params():
    assert config.load("demo").params_hash() == config.load("demo").params_hash()
    assert config.load("demo").params_hash() != config.load("demo", overrides={"seed": 1}).params_hash()


def test_every_field_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, config._Section):
                walk(annotation)
    walk(config.Params)


def test_params_never_hold_secrets():
    text = "\n".join(p.read_text() for p in (PROJECT_ROOT / "params").rglob("*.yaml"))
    assert "api_key" not in text.lower()
    assert "api_key" not in " ".join(config.LLMParams.model_fields)


def test_a_label_aware_loss_that_would_train_like_infonce_is_refused():
    with pytest.raises(config.ConfigError) as info:
        config.load("params/smoke.yaml", overrides={"train.loss": "label_aware",
                                                    "train.label_aware.same_labels": False})
    message = str(info.value)
    assert "trains exactly like infonce" in message and "same_labels" in message and "\n" not in message
    assert "got {" not in message  # the rule's message, not the whole train section
    assert config.load("params/smoke.yaml", overrides={"train.loss": "label_aware"}).train.label_aware.same_labels


def test_random_weights_lists_the_models_built_with_random_weights():
    assert config.load("demo").random_weights() == {}
    cfg = config.load("rehearsal")
    assert set(cfg.random_weights()) == {"clip.model", "captions.model", "asr.model"}
    spoken_offline = config.load("rehearsal", overrides={"asr.backend": "pocketsphinx"})
    assert "asr.model" not in spoken_offline.random_weights()  # a Whisper spec the run never loads is not its model
