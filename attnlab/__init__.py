"""attnlab: experimental attention architectures as Hugging Face transformers models.

Importing the package registers every member with AutoConfig, AutoModel and AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_elita import ElitaConfig
from .configuration_evolving import EvolvingConfig
from .configuration_triple_product import TripleProductConfig
from .modeling_elita import ElitaForCausalLM, ElitaModel
from .modeling_evolving import EvolvingForCausalLM, EvolvingModel
from .modeling_triple_product import TripleProductForCausalLM, TripleProductModel

_CAUSAL_LM_MEMBERS = [
    (EvolvingConfig, EvolvingModel, EvolvingForCausalLM),
    (TripleProductConfig, TripleProductModel, TripleProductForCausalLM),
    (ElitaConfig, ElitaModel, ElitaForCausalLM),
]

for _config, _model, _causal_lm in _CAUSAL_LM_MEMBERS:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _causal_lm, exist_ok=True)

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
    "ElitaConfig", "ElitaForCausalLM", "ElitaModel",
    "EvolvingConfig", "EvolvingForCausalLM", "EvolvingModel",
    "TripleProductConfig", "TripleProductForCausalLM", "TripleProductModel",
    "VQLNMLPConfig", "VQLNMLPForPrediction", "VQLNMLPModel",
]
