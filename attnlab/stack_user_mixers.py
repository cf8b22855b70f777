"""Mixers written outside attnlab that a saved folder carries with it, by import path.

Empty in the package. `StackPreTrainedModel.save_pretrained` rewrites this file in the folder it saves, with one
static relative import per user mixer (transformers finds remote code only through such imports), so that the
folder loads where neither attnlab nor the user's package is importable.
"""

USER_MIXERS: dict[str, type] = {}
