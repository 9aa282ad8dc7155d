"""A batch that does not fit in memory becomes one line naming batch_size, not a runtime dump."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from src.errors import UserError

# How MindSpore 2.10's CPU, GPU and Ascend memory pools report a failed allocation.
_OUT_OF_MEMORY = ("Memory not enough", "Memory isn't enough", "alloc failed", "Malloc device memory failed",
                  "Out of memory", "out of memory")
_ALLOC_SIZE = re.compile(r"alloc size:? \[?(\d+)\]?B?")


def is_out_of_memory(err: BaseException) -> bool:
    """True when ``err`` is the runtime failing to allocate memory."""
    if isinstance(err, MemoryError):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _OUT_OF_MEMORY)


@contextmanager
def batch_must_fit(batch_size: int, image_size: tuple[int, int], device_target: str) -> Iterator[None]:
    """Run the body; an out-of-memory failure in it becomes a UserError that names batch_size."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        size = _ALLOC_SIZE.search(str(err))
        detail = f"; an allocation of {int(size.group(1)):,} bytes failed" if size else ""
        smaller = max(1, batch_size // 2)
        raise UserError(f"batch_size={batch_size} with {image_size[0]}x{image_size[1]} images does not fit in "
                        f"{device_target} memory{detail}; expected a smaller batch: try --batch_size={smaller} "
                        "(or smaller image_height/image_width)") from None
