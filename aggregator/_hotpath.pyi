from collections.abc import Mapping

from aggregator.hotpath import KeyVerdict

def flow_head(data: bytes, /) -> tuple[bytes, int, int] | None: ...
def count_known(
    batch: list[bytes],
    index: int,
    verdicts: Mapping[bytes, KeyVerdict | str],
    open_start: int | None,
    open_end: int | None,
    open_verdicts: dict[str, KeyVerdict],
    skipped: dict[str, int],
    max_bytes: int,
    /,
) -> int: ...
