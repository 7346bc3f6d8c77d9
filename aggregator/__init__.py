"""goldmane-edge-aggregator: Calico Goldmane flows into a durable namespace-edge trail."""

import os

# gRPC core writes its own multi-line diagnostics to stderr; the daemon logs each
# failure itself, in one line, so core's logging is off unless asked for.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

__version__ = "0.1.0"
