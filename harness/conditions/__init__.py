"""Camera conditions: deterministic functions of (photo, ground-truth mask, severity, seed), registered by name.

    from harness.conditions import resolve
    photo, mask = resolve("tilt+jpeg").apply(photo, mask, (3.0, 70.0), seed=0, index=12)

`list_conditions()` names the registered ones; `parse_condition("blur=0,1,2")` reads the `--condition` option;
docs/conditions.md gives every grid and where it comes from. The trainer draws from the same registry.
"""
from harness.conditions import geometric, photometric  # noqa: F401  (registers the built-in conditions)
from harness.conditions.registry import (
    Combined,
    Condition,
    Severity,
    condition_seed,
    get_condition,
    list_conditions,
    parse_condition,
    parse_severity,
    register_condition,
    resolve,
    severity_text,
)

__all__ = ["Combined", "Condition", "Severity", "condition_seed", "get_condition", "list_conditions",
           "parse_condition", "parse_severity", "register_condition", "resolve", "severity_text"]
