"""OpenLineage run events (START, then COMPLETE or FAIL) through `openlineage-python`'s client.

The client is configured only its own ways (`openlineage.yml` in the working folder, in
`~/.openlineage/` or at `$OPENLINEAGE_CONFIG`; `OPENLINEAGE_URL`; `OPENLINEAGE__TRANSPORT__*`),
and where none is, nothing is built and nothing is emitted. Datasets are named by the
OpenLineage naming spec (`bertetl.io.naming`); the output carries a schema facet and a
column-lineage facet (the text column to each enrichment column), and the run one
`bertetl_model_<role>` facet per model (name, fingerprint, task). A Prefect flow run's events
carry the flow run as their parent (`ParentRunFacet`).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

log = logging.getLogger(__name__)

PRODUCER = "https://github.com/bertetl/bertetl"
#: Where the custom model facet is described (its `_schemaURL`).
MODEL_FACET_SCHEMA = PRODUCER + "/blob/main/docs/OPERATING.md#the-model-facet"
#: The job namespace when `OPENLINEAGE_NAMESPACE` does not name one.
DEFAULT_NAMESPACE = "bertetl"


def lineage_configured() -> bool:
    """Whether the OpenLineage client has a configuration of its own (its config file, its
    URL, or `OPENLINEAGE__TRANSPORT__*` variables): without one, no event is emitted."""
    if os.environ.get("OPENLINEAGE_URL") or os.environ.get("OPENLINEAGE_CONFIG"):
        return True
    if any(key.startswith("OPENLINEAGE__TRANSPORT") for key in os.environ):
        return True
    places = (Path.cwd(), Path.home() / ".openlineage")
    return any((place / "openlineage.yml").is_file() for place in places)


def job_namespace() -> str:
    """The namespace of bertetl's jobs (and of the flow runs that are their parents)."""
    return os.environ.get("OPENLINEAGE_NAMESPACE", DEFAULT_NAMESPACE)


@dataclass(frozen=True)
class ModelInfo:
    """One model of a run, for its facet: its role (`embed`, `classify`, ...: the task),
    name (its folder's name or alias) and fingerprint (a hash of its files)."""

    role: str
    name: str
    fingerprint: str


@dataclass(frozen=True)
class Parent:
    """The run that started this one (a Prefect flow run): its job and run id."""

    namespace: str
    job: str
    run_id: str


@dataclass
class LineageRun:
    """One run's events; `start()` once, then `complete()` or `fail(cause)`."""

    job: str
    inputs: list[tuple[str, str]]
    outputs: list[tuple[str, str]]
    input_schema: pa.Schema | None = None
    #: DEST holds SOURCE's rows and the `added` columns (its schema follows from SOURCE's);
    #: False for a report folder or a trained model.
    enriches: bool = True
    added: list[pa.Field] = field(default_factory=list)
    text_column: str | None = None
    models: list[ModelInfo] = field(default_factory=list)
    parent: Parent | None = None
    client: Any = None
    run_id: str = ""

    def __post_init__(self) -> None:
        from openlineage.client import OpenLineageClient
        from openlineage.client.uuid import generate_new_uuid

        self.client = OpenLineageClient()
        self.run_id = str(generate_new_uuid())
        self.namespace = job_namespace()

    def start(self) -> None:
        self._emit("START")

    def complete(self) -> None:
        self._emit("COMPLETE")

    def fail(self, cause: str) -> None:
        self._emit("FAIL", cause)

    def _emit(self, state: str, cause: str | None = None) -> None:
        from datetime import UTC, datetime

        from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
        from openlineage.client.facet_v2 import error_message_run, job_type_job

        run_facets: dict[str, Any] = {**self._model_facets()}
        if self.parent is not None:
            run_facets["parent"] = self._parent_facet()
        if cause is not None:
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=cause, programmingLanguage="python"
            )
        job_facets: dict[str, Any] = {
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="BERTETL", jobType="JOB"
            )
        }
        event = RunEvent(
            eventType=RunState[state],
            eventTime=datetime.now(UTC).isoformat(),
            run=Run(runId=self.run_id, facets=run_facets),
            job=Job(namespace=self.namespace, name=self.job, facets=job_facets),
            inputs=self._inputs(),
            outputs=self._outputs(),
            producer=PRODUCER,
        )
        try:
            self.client.emit(event)
        except Exception as e:  # lineage is a report: a receiver that is down fails no run
            log.warning("OpenLineage %s event not emitted: %s: %s", state, type(e).__name__, e)

    def _parent_facet(self) -> Any:
        from openlineage.client.facet_v2 import parent_run

        assert self.parent is not None
        return parent_run.ParentRunFacet(
            run=parent_run.Run(runId=self.parent.run_id),
            job=parent_run.Job(namespace=self.parent.namespace, name=self.parent.job),
        )

    def _model_facets(self) -> dict[str, Any]:
        facet = _model_facet_class()
        return {
            f"bertetl_model_{model.role.replace(':', '_')}": facet(
                name=model.name, fingerprint=model.fingerprint, task=model.role
            )
            for model in self.models
        }

    def _inputs(self) -> list[Any]:
        from openlineage.client.event_v2 import InputDataset

        facets = {}
        if self.input_schema is not None:
            facets["schema"] = _schema_facet(list(self.input_schema))
        return [InputDataset(namespace=ns, name=name, facets=facets) for ns, name in self.inputs]

    def _outputs(self) -> list[Any]:
        from openlineage.client.event_v2 import OutputDataset

        facets: dict[str, Any] = {}
        if self.input_schema is not None and self.enriches:
            kept = [f for f in self.input_schema if f.name not in {a.name for a in self.added}]
            facets["schema"] = _schema_facet([*kept, *self.added])
        if self.text_column is not None and self.added and self.inputs:
            facets["columnLineage"] = self._column_lineage()
        return [OutputDataset(namespace=ns, name=name, facets=facets) for ns, name in self.outputs]

    def _column_lineage(self) -> Any:
        from openlineage.client.facet_v2 import column_lineage_dataset as cl

        assert self.text_column is not None
        sources = [
            cl.InputField(
                namespace=ns,
                name=name,
                field=self.text_column,
                transformations=[
                    cl.Transformation(
                        type="DIRECT", subtype="TRANSFORMATION", description="model inference"
                    )
                ],
            )
            for ns, name in self.inputs
        ]
        return cl.ColumnLineageDatasetFacet(
            fields={f.name: cl.Fields(inputFields=sources) for f in self.added}
        )


@functools.cache
def _model_facet_class() -> Any:
    """The custom run facet of one model (an attrs class, as the client's own facets are)."""
    import attr
    from openlineage.client.facet_v2 import RunFacet

    @attr.define
    class BertetlModelRunFacet(RunFacet):
        """A model the run used: its name, fingerprint (a hash of its files) and task."""

        name: str
        fingerprint: str
        task: str

        @staticmethod
        def _get_schema() -> str:
            return MODEL_FACET_SCHEMA

    return BertetlModelRunFacet


def _schema_facet(fields: list[pa.Field]) -> Any:
    from openlineage.client.facet_v2 import schema_dataset

    return schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in fields
        ]
    )
