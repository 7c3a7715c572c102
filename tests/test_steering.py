"""Keys that cost nothing cannot steer what a node checks or tries (issue 18).

- Claimed scores: fresh keys claiming absurd gains do not take the front of the re-run
  queue (reruns._stranger_ranks).
- A trusted veto: one trusted key that refutes honest claims does not close them to our
  own check, and loses our trust when we check one (claims.py, swarm/trust.py DISSENT).
- Made-up failures: a stranger's crash of a program is no original that makes an honest
  claim of it a copy (programs.original_runs), and failures published for every edit the
  agent would try do not exhaust its search (proposals._propose)."""
import random

from experiments.agents.base import Tried, usable_source
from experiments.agents.mutate import MutateAgent
from experiments.research.scoreboard import Candidate
from genome import base_train_source, genome_id
from swarm.identity import NodeIdentity
from swarm.patch import make_patch
from experiments.research.swarm_link import announce_policy
from swarm.descriptions import working_on
from swarm.records import make_announce, make_attestation, make_experiment
from tests.test_copycat import ROOT, a_better_edit, make_loop, wire


def claim_on(loop, key, parent_id, source, edited, val_bpb, desc="[NEW] a line"):
    record = make_experiment(key, genome=genome_id(), parents=[parent_id], topic="optimizer",
                             arena=loop.arena, patch=make_patch(source, edited), desc=desc,
                             agent="mutate",
                             result={"status": "ok", "val_bpb": val_bpb, "train_s": 1.0,
                                     "total_s": 1.0, "tokens": 1000, "steps": 10,
                                     "params": 100, "peak_mem_mb": 1.0})
    loop.store.insert(wire(record))
    return record


def crash_on(loop, key, parent_id, source, edited, desc):
    record = make_experiment(key, genome=genome_id(), parents=[parent_id], topic="optimizer",
                             arena=loop.arena, patch=make_patch(source, edited), desc=desc,
                             agent="mutate",
                             result={"status": "crash", "reason": "made up", "train_s": 1.0,
                                     "total_s": 1.0})
    loop.store.insert(wire(record))
    return record


def attest(loop, key, target, verdict, val_bpb):
    record = make_attestation(key, genome=genome_id(), target=target.id, arena=loop.arena,
                              verdict=verdict,
                              result={"status": "ok", "val_bpb": val_bpb, "train_s": 1.0,
                                      "total_s": 1.0})
    loop.store.insert(wire(record))
    return record


def age(loop, key, hours):
    """As if this node had received every record of `key` `hours` ago."""
    loop.store._conn.execute("UPDATE records SET received_at = received_at - ? WHERE author = ?",
                             (int(hours * 3_600_000), key.public_key))


async def an_honest_claim(loop, margin_sigmas, honest=None):
    """A stranger's real improvement on the root, `margin_sigmas` noise levels better than
    our best (our trainer reproduces it)."""
    honest = honest or NodeIdentity.generate()
    sigma, best = loop.scores.sigma(), loop.scores.best()
    edited, result = a_better_edit(loop, base_train_source(), best.val_bpb,
                                   margin_sigmas * sigma)
    claim = claim_on(loop, honest, ROOT, base_train_source(), edited, result.val_bpb)
    return honest, claim


def sybil_claims(loop, n, val_bpb):
    claims = []
    for i in range(n):
        edited = base_train_source() + f"\n_sybil_{i} = {i}\n"
        claims.append(claim_on(loop, NodeIdentity.generate(), ROOT, base_train_source(),
                               edited, val_bpb))
    return claims


async def test_absurd_claimed_scores_do_not_take_the_front_of_the_rerun_queue(tmp_path):
    loop = make_loop(tmp_path)
    await loop.serve()  # three baselines: the arena's noise
    honest, claim = await an_honest_claim(loop, 5)
    sybils = sybil_claims(loop, 6, 0.01)  # far better than anything real
    firsts = set()
    for draw in range(40):
        loop.claim_lottery_key = random.Random(draw).randbytes(16)
        firsts.add(loop.pending_claim().id)
    # each key's turn is the lottery's, whatever it claimed
    assert claim.id in firsts and len(firsts) >= 4
    # a key this node has known for hours goes before keys minted since
    age(loop, honest, 2)
    for draw in range(10):
        loop.claim_lottery_key = random.Random(draw).randbytes(16)
        assert loop.pending_claim().id == claim.id
    # and the real claim is checked first, reproduced, and then built on
    outcome = await loop.step()
    assert outcome.kind == "verification" and outcome.record.body["target"] == claim.id
    assert outcome.reason == "reproduced"
    assert loop.pending_claim().id in {s.id for s in sybils}


async def test_strangers_who_kept_their_announced_promises_are_checked_first(tmp_path):
    loop = make_loop(tmp_path)
    await loop.serve()
    honest = NodeIdentity.generate()
    best = loop.scores.best()
    edits = []
    for i in range(2):   # two runs announced before their records came: promises kept
        edited = base_train_source() + f"\n_announced_{i} = {i}\n"
        desc = f"[NEW] announced {i}"
        loop.store.insert(wire(make_announce(honest, genome=genome_id(), topics=["optimizer"],
                                             arena=loop.arena,
                                             working_on=working_on(ROOT, desc))))
        edits.append(claim_on(loop, honest, ROOT, base_train_source(), edited,
                              best.val_bpb + 0.5, desc=desc))
    _, claim = await an_honest_claim(loop, 3, honest)
    sybil_claims(loop, 8, 0.01)
    reps = loop.trust.reputations()
    assert announce_policy(loop).standing(
        honest.public_key, reps, loop.store.announce_tallies([honest.public_key])) == "earned"
    for draw in range(10):
        loop.claim_lottery_key = random.Random(draw).randbytes(16)
        assert loop.pending_claim().author == honest.public_key


async def test_a_trusted_claim_still_ranks_by_its_claimed_score(tmp_path):
    loop = make_loop(tmp_path)
    await loop.serve()
    trusted, first = await an_honest_claim(loop, 5)
    attest(loop, loop.identity, first, "reproduced", first.val_bpb)
    assert loop.trust.reputations()[trusted.public_key] >= loop.config.trust.trust_threshold
    best, sigma = loop.scores.best(), loop.scores.sigma()
    near = claim_on(loop, trusted, first.id, loop.lineage.source_of(first.id),
                    loop.lineage.source_of(first.id) + "\n_near = 1\n",
                    best.val_bpb - 3 * sigma)
    far = claim_on(loop, trusted, first.id, loop.lineage.source_of(first.id),
                   loop.lineage.source_of(first.id) + "\n_far = 1\n", best.val_bpb - 9 * sigma)
    sybil_claims(loop, 3, 0.01)
    assert loop.pending_claim().id == far.id
    assert near.id != far.id


async def test_one_trusted_refuter_cannot_close_honest_claims_to_our_check(tmp_path):
    loop = make_loop(tmp_path)
    await loop.serve()
    # a key that earned our trust with one real claim...
    turncoat, earned = await an_honest_claim(loop, 5)
    attest(loop, loop.identity, earned, "reproduced", earned.val_bpb)
    reps = loop.trust.reputations()
    assert reps[turncoat.public_key] >= loop.config.trust.trust_threshold
    # ...then refutes every honest claim it sees
    honest, claim = await an_honest_claim(loop, 3)
    attest(loop, turncoat, claim, "refuted", claim.val_bpb + 1.0)
    sigma = loop.scores.sigma()
    reps = loop.trust.reputations()
    assert loop.trust.trusted_refuters(claim, reps) == [turncoat.public_key]
    assert not loop._open_claim(claim, sigma, reps)   # nobody builds on it unchecked...
    assert loop._open_claim(claim, sigma, reps, to_check=True)  # ...but we may check it
    assert not loop.trust.is_verified(claim, reps)
    outcome = None
    for _ in range(4):
        outcome = await loop.step()
        if outcome.kind == "verification" and outcome.record.body["target"] == claim.id:
            break
    assert outcome.kind == "verification" and outcome.reason == "reproduced"
    # our check contradicts the veto: the turncoat is no longer a verifier we count
    reps = loop.trust.reputations()
    assert reps[turncoat.public_key] < loop.config.trust.trust_threshold
    assert reps[honest.public_key] >= loop.config.trust.trust_threshold
    # a stranger who said the opposite has no reputation to lose: it is not tallied
    stranger = NodeIdentity.generate()
    attest(loop, stranger, claim, "refuted", claim.val_bpb + 1.0)
    assert stranger.public_key not in loop.trust.reputations()
    assert loop.trust.is_verified(loop.store.get(claim.id), reps)


async def test_k_trusted_refuters_do_close_a_claim(tmp_path):
    loop = make_loop(tmp_path)
    await loop.serve()
    verifiers = []
    for _ in range(loop.config.trust.k):
        key, earned = await an_honest_claim(loop, 5)
        attest(loop, loop.identity, earned, "reproduced", earned.val_bpb)
        verifiers.append(key)
    liar = NodeIdentity.generate()
    claim = sybil_claims(loop, 1, loop.scores.best().val_bpb - 6 * loop.scores.sigma())[0]
    for key in verifiers:
        attest(loop, key, claim, "refuted", claim.val_bpb + 1.0)
    reps = loop.trust.reputations()
    assert not loop._open_claim(claim, loop.scores.sigma(), reps, to_check=True)
    assert liar.public_key not in reps


def test_dissent_counts_every_contrary_verdict_in_the_arena_and_skips_the_author(tmp_path):
    from swarm.store import Store
    store = Store.open(tmp_path, root_id=ROOT)
    me, other, author = (NodeIdentity.generate() for _ in range(3))
    arena = "embedded/time:60/cpu"
    target = make_experiment(author, genome=genome_id(), parents=[ROOT], topic="optimizer",
                             arena=arena, patch=make_patch(base_train_source(),
                                                           base_train_source() + "\nx = 1\n"),
                             desc="x", agent="mutate",
                             result={"status": "ok", "val_bpb": 1.5, "train_s": 1.0,
                                     "total_s": 1.0})
    store.insert(wire(target))

    def say(key, verdict, t):
        store.insert(wire(make_attestation(
            key, genome=genome_id(), target=target.id, arena=arena, verdict=verdict,
            result={"status": "ok", "val_bpb": 1.5, "train_s": 1.0, "total_s": 1.0}, t=t)))
    say(me, "reproduced", 1_000)
    say(other, "refuted", 1_000)
    say(author, "refuted", 1_000)  # an author's word on its own record is no verdict
    assert store.dissent_counts(me.public_key) == [(other.public_key, 1)]
    say(other, "reproduced", 2_000)  # flipped once ours was known: it still said it
    assert store.dissent_counts(me.public_key) == [(other.public_key, 1)]
    say(me, "refuted", 3_000)  # our newest verdict is ours: now `other` agreed first
    assert store.dissent_counts(me.public_key) == [(other.public_key, 1)]
    # a verdict measured in another arena is no dissent (scores there differ honestly)
    elsewhere = NodeIdentity.generate()
    store.insert(wire(make_attestation(
        elsewhere, genome=genome_id(), target=target.id, arena="embedded/time:60/cuda",
        verdict="reproduced", result={"status": "ok", "val_bpb": 1.6, "train_s": 1.0,
                                      "total_s": 1.0}, t=4_000)))
    assert store.dissent_counts(me.public_key) == [(other.public_key, 1)]
    # and it is no verdict on the record at all
    assert elsewhere.public_key not in store.who_reproduced(target.id)


async def test_a_strangers_made_up_failure_makes_no_honest_claim_a_copy(tmp_path):
    loop = make_loop(tmp_path)
    await loop.serve()
    sigma, best = loop.scores.sigma(), loop.scores.best()
    edited, result = a_better_edit(loop, base_train_source(), best.val_bpb, 5 * sigma)
    # a key that guessed the next edit publishes it first, as a crash
    crash_on(loop, NodeIdentity.generate(), ROOT, base_train_source(), edited, "[NEW] a line")
    # and one publishes it as a worse score
    claim_on(loop, NodeIdentity.generate(), ROOT, base_train_source(), edited,
             best.val_bpb + 10 * sigma)
    honest = NodeIdentity.generate()
    claim = claim_on(loop, honest, ROOT, base_train_source(), edited, result.val_bpb)
    assert loop._copy_of(claim) is None
    assert loop.pending_claim().id == claim.id
    # while a copy of a kept claim is still a copy
    copier = NodeIdentity.generate()
    copy = claim_on(loop, copier, ROOT, base_train_source(), edited, result.val_bpb - sigma)
    assert loop._copy_of(copy) == claim.id


async def test_made_up_failures_of_every_edit_do_not_exhaust_the_search(tmp_path):
    loop = make_loop(tmp_path)
    loop.agent = MutateAgent(then=None)  # an agent that says when it has nothing left
    await loop.serve()
    parent = Candidate(ROOT, loop.scores.best().val_bpb)
    source = base_train_source()
    sybil = NodeIdentity.generate()
    rng = random.Random(0)
    faked = 0
    for _ in range(1500):  # publish a failure of whatever the agent would try next
        proposal = loop.agent.propose(source, loop.brief, loop.history(),
                                      parent_id=ROOT.hex(), rng=rng)
        if proposal.exhausted:
            break
        edited = usable_source(source, proposal)[0]
        assert edited is not None, proposal.failure
        crash_on(loop, sybil, ROOT, source, edited, proposal.desc)
        faked += 1
    else:
        raise AssertionError("the agent never ran out of edits")
    assert faked > 10
    found = await loop._propose(parent, source)
    assert found is not None and found.failure is None
    assert not loop._is_exhausted(ROOT)
    # the made-up failures still count as hints: a trusted peer's would be firm
    assert len(loop.history(firm=True)) < len(loop.history())


async def test_a_refutation_from_another_arena_is_no_verdict(tmp_path):
    loop = make_loop(tmp_path)
    await loop.serve()
    turncoat, earned = await an_honest_claim(loop, 5)
    attest(loop, loop.identity, earned, "reproduced", earned.val_bpb)
    _, claim = await an_honest_claim(loop, 3)
    loop.store.insert(wire(make_attestation(
        turncoat, genome=genome_id(), target=claim.id, arena="embedded/time:60/cuda",
        verdict="refuted", result={"status": "ok", "val_bpb": claim.val_bpb + 1,
                                   "train_s": 1.0, "total_s": 1.0})))
    reps = loop.trust.reputations()
    assert loop.trust.trusted_refuters(claim, reps) == []
    assert loop._open_claim(claim, loop.scores.sigma(), reps)   # may even be built on


async def test_a_front_runners_refuted_claim_makes_no_honest_claim_a_copy(tmp_path):
    loop = make_loop(tmp_path)
    await loop.serve()
    sigma, best = loop.scores.sigma(), loop.scores.best()
    edited, result = a_better_edit(loop, base_train_source(), best.val_bpb, 5 * sigma)
    # a key that guessed the next program claims it first, absurdly well
    fake = claim_on(loop, NodeIdentity.generate(), ROOT, base_train_source(), edited, 0.01)
    claim = claim_on(loop, NodeIdentity.generate(), ROOT, base_train_source(), edited,
                     result.val_bpb)
    assert loop._copy_of(claim) == fake.id        # kept, and first: until we check it
    attest(loop, loop.identity, fake, "refuted", result.val_bpb)
    assert loop._copy_of(claim) is None
    assert loop.pending_claim().id == claim.id


async def test_strangers_runs_of_every_proposal_do_not_stall_the_search(tmp_path):
    """Not exhausted: every edit the agent proposes repeats a program a stranger 'ran'
    (with a desc the agent does not read as tried), so every attempt is a duplicate."""
    loop = make_loop(tmp_path)
    loop.agent = MutateAgent(then=None)
    await loop.serve()
    parent = Candidate(ROOT, loop.scores.best().val_bpb)
    source = base_train_source()
    sources = set()
    for seed in range(100):   # what the agent would propose, attempt after attempt
        history, rng = loop.history(), random.Random(seed)
        for _ in range(loop.config.proposal_attempts):
            proposal = loop.agent.propose(source, loop.brief, history, parent_id=ROOT.hex(),
                                          rng=rng)
            if not proposal.ok:
                break
            sources.add(usable_source(source, proposal)[0])
            history = history + [Tried(edit_key=proposal.edit_key, desc=proposal.desc,
                                       parent_id=ROOT.hex(), status="rejected", delta=None)]
    sybil = NodeIdentity.generate()
    for i, edited in enumerate(sorted(sources)):
        crash_on(loop, sybil, ROOT, source, edited, f"[JUNK{i}] nothing")
    for _ in range(5):
        found = await loop._propose(parent, source)
        assert found is not None and found.failure is None
