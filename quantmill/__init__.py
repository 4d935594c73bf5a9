"""quantmill: declarative quantize → evaluate → gate → publish pipelines for causal LMs.

Importing quantmill masks secrets in every log record of the process (see
:mod:`quantmill.redact`), so Prefect workers and deployments that import the flows
get masked logs without going through the CLI.
"""

from quantmill.redact import install_log_redaction

__version__ = "0.2.0"

install_log_redaction()
