"""attnlab: experimental attention architectures as Hugging Face transformers models.

Importing the package registers every member of `attnlab.members.MEMBERS` with AutoConfig, AutoModel and
AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_depth_recurrent import DepthRecurrentConfig
from .configuration_elita import ElitaConfig
from .configuration_evolving import EvolvingConfig
from .configuration_triple_product import TripleProductConfig
from .members import MEMBERS
from .modeling_depth_recurrent import DepthRecurrentForCausalLM, DepthRecurrentModel
from .modeling_elita import ElitaForCausalLM, ElitaModel
from .modeling_evolving import EvolvingForCausalLM, EvolvingModel
from .modeling_triple_product import TripleProductForCausalLM, TripleProductModel

for _member in MEMBERS.values():
    AutoConfig.register(_member.config_class.model_type, _member.config_class, exist_ok=True)
    AutoModel.register(_member.config_class, _member.model_class, exist_ok=True)
    AutoModelForCausalLM.register(_member.config_class, _member.causal_lm_class, exist_ok=True)

# --- Time-series member vqlnmlp (seed 004), branch vqlnmlp: to be folded into the registry -------------------
from transformers import AutoModelForTimeSeriesPrediction

from .configuration_vqlnmlp import VQLNMLPConfig
from .modeling_vqlnmlp import VQLNMLPForPrediction, VQLNMLPModel

AutoConfig.register(VQLNMLPConfig.model_type, VQLNMLPConfig, exist_ok=True)
AutoModel.register(VQLNMLPConfig, VQLNMLPModel, exist_ok=True)
AutoModelForTimeSeriesPrediction.register(VQLNMLPConfig, VQLNMLPForPrediction, exist_ok=True)
# --- end of the vqlnmlp block ---------------------------------------------------------------------------------

__version__ = "0.1.0"
__all__ = [
    "DepthRecurrentConfig", "DepthRecurrentForCausalLM", "DepthRecurrentModel",
    "ElitaConfig", "ElitaForCausalLM", "ElitaModel",
    "EvolvingConfig", "EvolvingForCausalLM", "EvolvingModel",
    "TripleProductConfig", "TripleProductForCausalLM", "TripleProductModel",
    "VQLNMLPConfig", "VQLNMLPForPrediction", "VQLNMLPModel",
]
