"""How a run reports to the platform: the options, declared once (CLI and flow parameters)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

#: The environment variable that names a Pushgateway when `--pushgateway` is not given.
PUSHGATEWAY_ENV = "BERTETL_PUSHGATEWAY"


class ObserveOptions(BaseModel):
    """Metrics and cost of a run (OpenLineage is configured by its own client's ways)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pushgateway: str | None = Field(
        None,
        description="Push the run's metrics to this Prometheus Pushgateway (URL, e.g. "
        f"http://pushgateway:9091; else ${PUSHGATEWAY_ENV}) after each partition and at the "
        "end. One that cannot be reached is a warning.",
    )
    cost_per_hour: float | None = Field(
        None,
        ge=0,
        description="Price of one hour of the device (GPU or CPU): turns the run's "
        "device-seconds into an estimated cost in the summary and reports.",
    )

    def gateway(self) -> str | None:
        """The Pushgateway to push to: the option, else the environment, else none."""
        return self.pushgateway or os.environ.get(PUSHGATEWAY_ENV) or None
