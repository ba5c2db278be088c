"""Search spaces: the arch dataclass, the space of choices, YAML loading and the built-in spaces."""
from search_spaces.arch import Arch, StageArch
from search_spaces.loading import builtin_spaces, load_arch, load_space
from search_spaces.space import SearchSpace, StageChoices

__all__ = ["Arch", "SearchSpace", "StageArch", "StageChoices", "builtin_spaces",
           "load_arch", "load_space"]
