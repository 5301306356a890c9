"""MLflow filter strings for permsym's runs: a quoted literal, a role's filter, a sweep's trial runs."""

PARENT_ROLE = "parent"
TRIAL_ROLE = "trial"
ROLE_TAG = "permsym.role"


def _q(value: str) -> str:
    """A string literal for an MLflow filter string."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _role_filter(role: str) -> str:
    return f"tags.`{ROLE_TAG}` = {_q(role)}"


def _trial_filter(sweep_name: str, extra: str = "") -> str:
    f = f"tags.sweep = {_q(sweep_name)} and {_role_filter(TRIAL_ROLE)}"
    return f"{f} and {extra}" if extra else f
