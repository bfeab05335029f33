"""Installing the plugin's wrappers around fairseq functions, once per process."""
from typing import Any, Callable

MARK = "leebert_wrapped"


def wrap_once(owner: Any, name: str, wrap: Callable[[Callable], Callable]) -> None:
    """Replace ``owner.name`` by ``wrap(owner.name)``, unless an earlier import already did."""
    current = getattr(owner, name)
    if getattr(current, MARK, False):
        return
    wrapped = wrap(current)
    setattr(wrapped, MARK, True)
    setattr(owner, name, wrapped)
