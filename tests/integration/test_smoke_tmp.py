from executions import operations
from executions.audit import verify
from tests.conftest import wait_terminal


def test_smoke(worker, define):
    define("wf", [{"handler": "test.echo"}, {"handler": "test.echo"}, {"handler": "test.echo"}])
    doc, created = operations.start("wf", {"a": 1})
    [done] = wait_terminal(doc["_id"])
    import pprint; pprint.pprint(done)
    assert verify(done) == []
