"""attnlab: experimental attention architectures as Hugging Face transformers models.

Importing the package registers every member of `attnlab.members.MEMBERS` with AutoConfig, AutoModel and
AutoModelForCausalLM, and every time-series member with AutoModelForTimeSeriesPrediction.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForTimeSeriesPrediction

from .configuration_depth_recurrent import DepthRecurrentConfig
from .configuration_elita import ElitaConfig
from .configuration_evolving import EvolvingConfig
from .configuration_triple_product import TripleProductConfig
from .configuration_vqlnmlp import VQLNMLPConfig
from .configuration_mixer_stack import MixerStackConfig
from .members import MEMBERS, STACKS, TIME_SERIES_MEMBERS
from .mixers import get_mixer, register_mixer
from .modeling_mixer_stack import MixerStackForCausalLM, MixerStackModel
from .modeling_depth_recurrent import DepthRecurrentForCausalLM, DepthRecurrentModel
from .modeling_elita import ElitaForCausalLM, ElitaModel
from .modeling_evolving import EvolvingForCausalLM, EvolvingModel
from .modeling_triple_product import TripleProductForCausalLM, TripleProductModel
from .modeling_vqlnmlp import VQLNMLPForPrediction, VQLNMLPModel

for _member in (*MEMBERS.values(), STACKS["stack_mixed"]):
    AutoConfig.register(_member.config_class.model_type, _member.config_class, exist_ok=True)
    AutoModel.register(_member.config_class, _member.model_class, exist_ok=True)
    AutoModelForCausalLM.register(_member.config_class, _member.causal_lm_class, exist_ok=True)

for _member in TIME_SERIES_MEMBERS.values():
    AutoConfig.register(_member.config_class.model_type, _member.config_class, exist_ok=True)
    AutoModel.register(_member.config_class, _member.model_class, exist_ok=True)
    AutoModelForTimeSeriesPrediction.register(_member.config_class, _member.prediction_class, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "DepthRecurrentConfig", "DepthRecurrentForCausalLM", "DepthRecurrentModel",
    "ElitaConfig", "ElitaForCausalLM", "ElitaModel",
    "EvolvingConfig", "EvolvingForCausalLM", "EvolvingModel",
    "MixerStackConfig", "MixerStackForCausalLM", "MixerStackModel", "get_mixer", "register_mixer",
    "TripleProductConfig", "TripleProductForCausalLM", "TripleProductModel",
    "VQLNMLPConfig", "VQLNMLPForPrediction", "VQLNMLPModel",
]
