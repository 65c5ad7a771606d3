"""A small "jobs" MCP server for the signoff demo, shaped like RunPod's serverless tools.

Four tools over stdio, with no MCP annotations (RunPod's server ships none, so signoff falls back to
classifying the tools by name): `list-jobs`, `get-job`, `cancel-job` and `delete-endpoint`; and a
fifth, `finish-job`, that plays a job's worker finishing it (the demo's policy hides it from agents;
tests use it to change a job's state while a cancel waits for approval).
State lives in memory for the life of the process, so a cancel shows up in `get-job` and `list-jobs`.
Results are pretty JSON text, as RunPod's server returns them.

Run: `python -m proxy.demo.jobs_server` (stdio; normally started by the gateway).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("demo-jobs", version="1.0.0")


@dataclass
class Job:
    id: str
    endpoint_id: str
    status: str  # IN_QUEUE | IN_PROGRESS | COMPLETED | FAILED | CANCELLED (RunPod's job statuses)
    input: dict[str, Any]
    submitted_at: str
    execution_ms: int | None = None


# The demo's "now" (`DEMO_JOBS_EPOCH`, set by the replicas demo so its jobs servers agree).
STARTED = datetime.fromtimestamp(float(os.environ.get("DEMO_JOBS_EPOCH") or time.time()), UTC)


def _ago(minutes: int) -> str:
    return (STARTED - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


ENDPOINTS: dict[str, dict[str, Any]] = {
    "sdxl-4k7q2m": {"id": "sdxl-4k7q2m", "name": "sdxl-turbo", "gpu": "NVIDIA L40S", "workers": 3},
    "llama-9x1p0w": {"id": "llama-9x1p0w", "name": "llama-3-70b-vllm", "gpu": "NVIDIA H100", "workers": 2},
}

JOBS: dict[str, Job] = {
    job.id: job
    for job in [
        Job("job-7f3a", "sdxl-4k7q2m", "IN_PROGRESS", {"prompt": "product shots, batch of 400"}, _ago(42)),
        Job("job-91c2", "sdxl-4k7q2m", "IN_QUEUE", {"prompt": "logo variations"}, _ago(3)),
        Job("job-2d8e", "sdxl-4k7q2m", "COMPLETED", {"prompt": "hero banner"}, _ago(75), 18_420),
        Job("job-c4e1", "llama-9x1p0w", "IN_PROGRESS", {"prompt": "summarise 10k support tickets"}, _ago(12)),
        Job("job-0b77", "llama-9x1p0w", "FAILED", {"prompt": "translate catalogue"}, _ago(130), 4_210),
    ]
}

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


def _json(data: Any) -> str:
    return json.dumps(data, indent=2)


@mcp.tool(name="list-jobs", structured_output=False)
def list_jobs(endpoint_id: str | None = None) -> str:
    """List jobs and their status, optionally of one endpoint only."""
    jobs = [asdict(j) for j in JOBS.values() if endpoint_id is None or j.endpoint_id == endpoint_id]
    return _json({"jobs": jobs})


@mcp.tool(name="get-job", structured_output=False)
def get_job(job_id: str) -> str:
    """Get one job's status."""
    job = JOBS.get(job_id)
    if job is None:
        raise ValueError(f"job {job_id} not found")
    return _json(asdict(job))


@mcp.tool(name="cancel-job", structured_output=False)
def cancel_job(endpoint_id: str, job_id: str) -> str:
    """Cancel a queued or running job. Its work so far is lost and it cannot be resumed."""
    job = JOBS.get(job_id)
    if job is None or job.endpoint_id != endpoint_id:
        raise ValueError(f"job {job_id} not found on endpoint {endpoint_id}")
    if job.status in FINISHED:
        raise ValueError(f"job {job_id} already finished ({job.status}); nothing to cancel")
    job.status = "CANCELLED"
    return _json({"id": job.id, "status": job.status})


@mcp.tool(name="finish-job", structured_output=False)
def finish_job(job_id: str, status: str = "COMPLETED") -> str:
    """Finish a job as if its worker had (demo only): COMPLETED or FAILED."""
    job = JOBS.get(job_id)
    if job is None:
        raise ValueError(f"job {job_id} not found")
    if status not in ("COMPLETED", "FAILED"):
        raise ValueError("status must be COMPLETED or FAILED")
    if job.status in FINISHED:
        raise ValueError(f"job {job_id} already finished ({job.status})")
    job.status = status
    job.execution_ms = 61_000
    return _json(asdict(job))


@mcp.tool(name="delete-endpoint", structured_output=False)
def delete_endpoint(endpoint_id: str) -> str:
    """Delete an endpoint and its workers."""
    endpoint = ENDPOINTS.pop(endpoint_id, None)
    if endpoint is None:
        raise ValueError(f"endpoint {endpoint_id} not found")
    for job in JOBS.values():
        if job.endpoint_id == endpoint_id and job.status not in FINISHED:
            job.status = "CANCELLED"
    return _json({"deleted": endpoint_id})


if __name__ == "__main__":
    mcp.run()
