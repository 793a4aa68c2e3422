"""Scale-out: several service processes and delivery workers sharing one Redis and one OPA
sidecar. The service runs as deployed (gunicorn with two workers, two `decision-service
worker` processes, the real OPA pulling the bundle the service serves; tests/fault_rig.py).
In the run with DECISION_TEST_REDIS=cluster that Redis is a three-master Redis Cluster."""

from __future__ import annotations

from pathlib import Path

import redis
from fault_rig import Rig


def test_web_workers_and_delivery_workers_share_one_redis(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    rig = Rig(tmp_path, redis_url=redis_url)
    rig.start()
    try:
        subjects = [f"S-{i}" for i in range(500)]
        rig.post_facts(subjects)
        answers = rig.run(subjects, rate=100)
        assert {a.status for a in answers} == {201}
        rig.drain(60)
        accounting = rig.account()
        assert accounting.problems() == {}
        assert accounting.decisions == len(subjects)
        assert accounting.delivered == accounting.allowed > len(subjects)
        assert all(rig.alive().values())
        served = {d.headers["User-Agent"] for d in rig.executor.deliveries}
        assert len(served) == 2  # both delivery workers took their share
        assert rig.opa is not None
        verdict_ids = {action["verdict"].get("opa_decision_id") for record in rig.records()
                       for action in record["actions"]}
        assert None not in verdict_ids  # every verdict names its entry in OPA's decision log
        assert len(verdict_ids) >= len(subjects)  # one OPA decision (at least) per decision
        assert verdict_ids <= {e["decision_id"] for e in rig.opa.decision_log()}
    finally:
        rig.stop()
