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

# --- depth_recurrent (seed 002) ---------------------------------------------------------------------------------
from .configuration_depth_recurrent import DepthRecurrentConfig  # noqa: E402
from .modeling_depth_recurrent import DepthRecurrentForCausalLM, DepthRecurrentModel  # noqa: E402

AutoConfig.register(DepthRecurrentConfig.model_type, DepthRecurrentConfig, exist_ok=True)
AutoModel.register(DepthRecurrentConfig, DepthRecurrentModel, exist_ok=True)
AutoModelForCausalLM.register(DepthRecurrentConfig, DepthRecurrentForCausalLM, exist_ok=True)
__all__ = ["DepthRecurrentConfig", "DepthRecurrentForCausalLM", "DepthRecurrentModel"]
# -----------------------------------------------------------------------------------------------------------------

__version__ = "0.1.0"
__all__ += [
    "ElitaConfig", "ElitaForCausalLM", "ElitaModel",
    "EvolvingConfig", "EvolvingForCausalLM", "EvolvingModel",
    "TripleProductConfig", "TripleProductForCausalLM", "TripleProductModel",
]
