"""The registry: every architecture is registered by importing the package, and a factory refuses an option it
does not take, naming the option and the model."""
import pytest

from harness.models import create_model, list_models
from harness.models.localizer import build_localizer


def test_the_package_registers_every_family():
    assert {"hrnet_w18", "hrnet_w48", "pidnet_s", "lite_hrnet_18"} <= set(list_models("localizer"))
    assert {"reference_sdecoder", "stegastamp_decoder"} <= set(list_models("sdecoder"))


@pytest.mark.parametrize("name", ["hrnet_w18_small_v1", "lite_hrnet_18", "pidnet_s", "stegastamp_decoder",
                                  "reference_sdecoder"])
def test_a_misspelt_option_is_refused_with_the_model_named(name):
    with pytest.raises(TypeError, match=rf"model '{name}' has no option 'num_clases'"):
        create_model(name, num_clases=2)


def test_the_localizer_builder_refuses_it_too():
    with pytest.raises(TypeError, match="'augmnt'"):
        build_localizer("pidnet_s", 64, augmnt=True)
