from collections import Counter

from aggregator import hotpath
from aggregator.hotpath import KeyVerdict, KeyVerdicts
from aggregator.mapping import KeyFields

class Connection:
    def __init__(self, name: str) -> None: ...
    @property
    def name(self) -> str: ...
    best: KeyVerdict | None
    generation: int

class KeyTable:
    def __init__(self, seed: int) -> None: ...
    def get(self, key: bytes, default: None = None, /) -> KeyVerdict | str | None: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __getitem__(self, key: bytes, /) -> KeyVerdict | str: ...
    def __setitem__(self, key: bytes, value: KeyVerdict | str, /) -> None: ...

def flow_head(data: bytes, /) -> tuple[bytes, int, int] | None: ...
def read_key(key: bytes, /) -> KeyFields | None: ...
def count_known(
    batch: list[bytes],
    index: int,
    verdicts: KeyVerdicts,  # a KeyTable: the C version refuses anything else
    open_start: int | None,
    open_end: int | None,
    generation: int,
    counted: list[hotpath.Connection],
    skipped: dict[str, int],
    max_bytes: int,
    /,
) -> int: ...
def seal_bucket(
    counted: list[hotpath.Connection],
    start: int,
    end: int,
    connections: Counter[str],
    first_seen: dict[str, int],
    last_seen: dict[str, int],
    edges: dict[str, tuple[str, str, str]],
    /,
) -> None: ...
