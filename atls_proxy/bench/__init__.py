"""``atls-proxy bench``: load benchmarks on loopback.

* ``attest`` (``atls_proxy.bench.attest``): attested connections per second per freshness tier —
  the original command, kept with its flags and JSON keys;
* the suite (``atls_proxy.bench.workloads``): ``attest``, ``handshake``, ``small``, ``bulk`` and
  ``idle`` workloads against the proxy and, in the same run, against the baselines (the backend
  directly, the same proxy with attestation off, HAProxy), reported by ``atls_proxy.bench.report``.

``from atls_proxy.bench import run_attest_bench, print_results`` keeps working.
"""

from atls_proxy.bench.attest import (
    MAX_CONNECTIONS,
    TIERS,
    Result,
    print_results,
    render,
    run_attest_bench,
)

__all__ = ["MAX_CONNECTIONS", "TIERS", "Result", "print_results", "render", "run_attest_bench"]
