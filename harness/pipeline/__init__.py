"""decoder2 twice: a plain per-photo reference (reference.py) and the fast batched evaluator (batched.py)."""
