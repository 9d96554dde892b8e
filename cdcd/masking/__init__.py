"""PII/PHI masking (R-21): canonical text, strategies, the token vault and the shared stage."""
