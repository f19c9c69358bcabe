"""Job ids sort by when the job was made (app.jobids), so a ledger's primary-key index grows at one edge and
cleanup deletes old jobs from neighbouring pages; lists print a short form that tells a batch's jobs apart."""
from __future__ import annotations

import time
import uuid

from conftest import cli


def test_ids_sort_in_the_order_jobs_were_made(env):
    from app import submit, submit_many
    made = []
    for round_ in range(10):
        made.append(submit("add", a=round_, b=1))
        made += submit_many("add", [{"a": round_, "b": i} for i in range(3)])
        time.sleep(0.002 * (round_ % 2))  # ids from the same millisecond and from later ones
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(str(uuid.UUID(job_id)) == job_id for job_id in made)
    assert {(uuid.UUID(job_id).version, uuid.UUID(job_id).variant) for job_id in made} == {(8, uuid.RFC_4122)}


def test_a_batch_of_jobs_is_one_run_of_the_primary_key(env):
    """Random ids put every job of a batch on its own page of the index, among every other job's: deleting the
    batch later dirtied a page per job. Made in order, the batch's ids hold no other job between them."""
    from app import submit, submit_many
    from app.models import Job
    first = submit_many("add", [{"a": i, "b": 0} for i in range(300)])
    between = submit("add", a=1, b=1)
    second = submit_many("add", [{"a": i, "b": 1} for i in range(300)])
    for batch in (first, second):
        inside = [job.id for job in Job.select(Job.id).where(Job.id.between(min(batch), max(batch)))
                  .order_by(Job.id)]
        assert inside == sorted(batch)
    assert max(first) < between < min(second)


def test_lists_print_a_short_id_that_tells_a_batch_apart_and_show_takes_it(env):
    from app import jobids, submit_many
    ids = submit_many("add", [{"a": i, "b": 0} for i in range(2000)])
    shorts = [jobids.short(job_id) for job_id in ids]
    assert len(set(shorts)) == len(ids) and all(len(s) == jobids.SHORT_LENGTH for s in shorts)
    listed = cli(env, "list", "--limit", "5")
    assert listed.returncode == 0 and sum(s in listed.stdout for s in shorts) == 5, listed.stdout
    wanted = ids[1234]
    shown = cli(env, "show", jobids.short(wanted), "--json")
    assert shown.returncode == 0 and f'"id": "{wanted}"' in shown.stdout, shown.stderr


def test_show_says_when_a_prefix_is_the_start_of_several_jobs(env):
    """The first 8 characters are shared by the jobs made in one millisecond: `show` and the operator commands
    say so, and how many characters lists print, instead of that there is no such job."""
    from app import jobids, submit_many
    ids = submit_many("add", [{"a": i, "b": 0} for i in range(20)])
    shared = ids[0][:8]
    many = sum(job_id.startswith(shared) for job_id in ids)
    assert many > 1  # one call's ids share their millisecond (a count past 65,535 carries into the next)
    for command in (("show", shared), ("retry", shared)):
        out = cli(env, *command)
        assert out.returncode == 1, out
        assert f"{many} jobs have ids starting with '{shared}'" in out.stderr, out.stderr
        assert f"lists print {jobids.SHORT_LENGTH} characters" in out.stderr
    missing = cli(env, "show", "0000ffff-ffff")
    assert missing.returncode == 1 and "no job '0000ffff-ffff' in the ledger" in missing.stderr
