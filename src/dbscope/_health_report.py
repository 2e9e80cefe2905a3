"""What ``db.health()`` answers: checks and their verdict, in ``application/health+json``.

The format is draft-inadarei-api-health-check's: an overall ``status`` (``pass``, ``warn``,
``fail``), and ``checks`` keyed ``component:measurement``, each a list of readings with their
observed value, unit, status and time. ``_health.py`` takes the readings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class HealthCheck:
    """One reading of a :class:`Health` answer: one entry of its ``checks``.

    Attributes:
        component: what was observed: ``"database"`` (the server) or ``"pool"``.
        measurement: ``"responseTime"``, ``"utilization"``, ``"waiting"`` or
            ``"migrations"``; the check's key is ``component:measurement``.
        component_type: ``"datastore"`` for the server, ``"component"`` for the pool.
        status: ``"pass"``, ``"warn"`` or ``"fail"``.
        time: when the value was read (UTC); a server reading may be up to ``max_age`` old.
        observed_value: the value read, if any (milliseconds, a percentage, a count, the
            revisions the database is at).
        observed_unit: the unit of ``observed_value``.
        output: why the status is not ``"pass"``; None when it is.
        component_id: which Database the reading is of, where one answer covers several
            (``health_router(db, billing)``): its ``pool_name``; None otherwise.
    """

    component: str
    measurement: str
    component_type: str
    status: Status
    time: datetime
    observed_value: float | int | tuple[str, ...] | None = None
    observed_unit: str | None = None
    output: str | None = None
    component_id: str | None = None

    @property
    def key(self) -> str:
        """The check's name in ``checks``: ``component:measurement``."""
        return f"{self.component}:{self.measurement}"

    def to_dict(self) -> dict[str, Any]:
        """The check as an ``application/health+json`` check object."""
        rendered: dict[str, Any] = {"componentType": self.component_type}
        if self.component_id is not None:
            rendered["componentId"] = self.component_id
        if self.observed_value is not None:
            value = self.observed_value
            rendered["observedValue"] = list(value) if isinstance(value, tuple) else value
            rendered["observedUnit"] = self.observed_unit
        rendered["status"] = self.status
        rendered["time"] = self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if self.output is not None:
            rendered["output"] = self.output
        return rendered


@dataclass(frozen=True)
class Health:
    """What ``db.health()`` found: an overall status and the checks behind it.

    Attributes:
        status: ``"fail"`` if any check failed, else ``"warn"`` if any warned, else
            ``"pass"``.
        checks: the readings, in a fixed order: the server, the migrations (when asked),
            the pool.
    """

    status: Status
    checks: tuple[HealthCheck, ...]

    @classmethod
    def of(cls, checks: tuple[HealthCheck, ...]) -> Health:
        """The answer made of ``checks``, with the worst of their statuses."""
        statuses = {check.status for check in checks}
        status: Status = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
        return cls(status=status, checks=checks)

    @classmethod
    def together(cls, answers: Mapping[str, Health]) -> Health:
        """One answer over several Databases' (keyed by pool_name), each check marked with
        its Database's: the worst status of all."""
        return cls.of(
            tuple(
                replace(check, component_id=name)
                for name, health in answers.items()
                for check in health.checks
            )
        )

    @property
    def http_status(self) -> int:
        """The HTTP status to answer with: 503 for ``"fail"``, 200 otherwise."""
        return 503 if self.status == "fail" else 200

    def to_dict(self) -> dict[str, Any]:
        """The ``application/health+json`` document: ``status``, ``output``, ``checks``."""
        rendered: dict[str, Any] = {"status": self.status}
        outputs = [
            check.output if check.component_id is None else f"{check.component_id}: {check.output}"
            for check in self.checks
            if check.output is not None
        ]
        if outputs and self.status != "pass":
            rendered["output"] = "; ".join(outputs)
        checks: dict[str, list[dict[str, Any]]] = {}
        for check in self.checks:
            checks.setdefault(check.key, []).append(check.to_dict())
        rendered["checks"] = checks
        return rendered
