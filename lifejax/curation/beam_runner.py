"""The same curation as an Apache Beam pipeline, for corpora beyond one machine.

Graph (per-document work is `steps`, shared with the local runner):

  shard specs -> Reshuffle -> Phase1 (per shard) -> survivors, removed, tally
  survivors -> (content hash, doc) -> GroupByKey -> exact verdicts
  survivors - exact dups -> ((band, band key), doc) -> GroupByKey
      -> star edges per bucket [-> join both ends' signatures, verify]
      -> ToList -> union-find -> near verdicts
  (spec, survivors, removed, verdicts) CoGroupByKey shard -> Phase2
      -> output shard file, ledger file, tally
  tallies -> CombineGlobally(merge) -> _work/tally.json

The candidate edge list (a few per duplicate, none for unique documents) is
gathered on one worker for the union-find; that is fine into the hundreds of
millions of edges. Beyond that, swap in an iterative large-star/small-star
connected-components stage.

Running on a cluster: the runner flags are ordinary Beam pipeline options.
Outputs, ledgers and the tally are written through Beam's FileSystems, but
shards are planned and read with plain file I/O, so the input and output
directories must be a filesystem every worker mounts (NFS, gcsfuse, ...):

  run_curation("/mnt/corpus", "/mnt/curated", config, runner="beam",
               beam_args=["--runner=FlinkRunner", "--flink_master=host:8081",
                          "--environment_type=LOOPBACK"])
  # Spark:    ["--runner=SparkRunner", "--spark_master_url=spark://host:7077"]
  # Dataflow: ["--runner=DataflowRunner", "--project=my-project",
  #            "--region=us-central1", "--temp_location=gs://bucket/tmp",
  #            "--setup_file=./setup.py"]  (with the data on a mounted volume)
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from lifejax.curation import minhash, steps
from lifejax.curation.config import CurationConfig
from lifejax.curation.decontam import ContaminationIndex
from lifejax.curation.dedup import cluster_sizes, priority_rank
from lifejax.curation.shards import ShardSpec, jsonl_bytes
from lifejax.curation.stats import Tally

_EMPTY = np.uint32(0xFFFFFFFF)


def _write(path: str, data: bytes) -> None:
  directory = path.rsplit("/", 1)[0]
  if not FileSystems.exists(directory):
    try:
      FileSystems.mkdirs(directory)
    except IOError:
      pass  # created concurrently by another worker
  with FileSystems.create(path) as f:
    f.write(data)


class _Phase1(beam.DoFn):
  """Phase 1 of one shard: survivors (main), "removed" ledgers, "tally"."""

  def __init__(self, config: CurationConfig):
    self.config = config

  def process(self, element: tuple[str, ShardSpec]):
    _, spec = element
    records, sigs, removed, tally = steps.phase1_shard(spec, self.config)
    for record, sig in zip(records, sigs):
      record["sig"] = sig
      record["shard"] = spec.name
      yield record
    for entry in removed:
      yield beam.pvalue.TaggedOutput("removed", (spec.name, entry))
    yield beam.pvalue.TaggedOutput("tally", tally)


def _member(record: dict[str, Any], priority: tuple[str, ...]):
  """(rank, (shard, line), id): sorts like the local runner's keep order."""
  return (priority_rank(record["doc"]["source"], priority),
          (record["shard"], record["idx"]), record["doc"]["id"])


def _exact(element):
  """Group of equal content hashes -> verdicts for all but the first."""
  _, members = element
  members = sorted(members)
  for _, key, _ in members[1:]:
    yield key, ("exact_dedup", members[0][2])


def _bands(record: dict[str, Any], exact: dict[tuple[str, int], Any],
           config: minhash.MinHashConfig, priority: tuple[str, ...]):
  member = _member(record, priority)
  if member[1] in exact or np.all(record["sig"] == _EMPTY):
    return
  keys = minhash.band_keys(record["sig"][None, :], config)[0]
  for band, band_key in enumerate(keys.tolist()):
    yield (band, band_key), member


def _with_first_sig(element):
  """Edges keyed by their head, joined with the head's signature."""
  _, joined = element
  for sig in joined["sig"]:
    for edge in joined["edges"]:
      yield edge[1][1], (edge, sig)


def _verified(element, threshold: float):
  """Edges keyed by their tail, kept if the two signatures agree enough."""
  _, joined = element
  for sig_v in joined["sig"]:
    for edge, sig_u in joined["edges"]:
      if float(np.mean(sig_u == sig_v)) >= threshold:
        yield edge


def _star(element):
  _, members = element
  members = sorted(members)
  for member in members[1:]:
    yield members[0], member


def _components(edges: list[tuple[Any, Any]]):
  """Union-find over all candidate edges -> near verdicts, plus a tally."""
  nodes = sorted({n for e in edges for n in e})
  index = {n: i for i, n in enumerate(nodes)}
  u = np.array([index[a] for a, _ in edges], dtype=np.int64)
  v = np.array([index[b] for _, b in edges], dtype=np.int64)
  root = minhash.connected_components(len(nodes), u, v)
  dup_of = {i: int(r) for i, r in enumerate(root.tolist()) if r != i}
  tally = Tally()
  for size, n in cluster_sizes(dup_of).items():
    tally.counters[("near_cluster_size", str(size))] += n
  yield beam.pvalue.TaggedOutput("tally", tally)
  for i, r in dup_of.items():
    yield nodes[i][1], ("near_dedup", nodes[r][2])


class _Phase2(beam.DoFn):
  """Phase 2 of one shard; writes its output and ledger files."""

  def __init__(self, config: CurationConfig, index: ContaminationIndex | None,
               out_dir: str):
    self.config, self.index, self.out_dir = config, index, out_dir

  def process(self, element):
    _, grouped = element
    spec = grouped["spec"][0]
    records = list(grouped["records"])
    verdicts = {idx: tuple(v) for idx, v in grouped["verdicts"]}
    outputs, ledgers, tally = steps.phase2_shard(spec, records, verdicts,
                                                 self.index, self.config)
    _write(f"{self.out_dir}/{spec.source}/{spec.name}.jsonl",
           jsonl_bytes(outputs))
    ledger = sorted(list(grouped["removed"]) + ledgers, key=lambda e: e["idx"])
    _write(f"{self.out_dir}/_work/ledger/{spec.name}.jsonl", jsonl_bytes(ledger))
    yield tally


class _MergeTallies(beam.CombineFn):

  def __init__(self, k: int):
    self.k = k

  def create_accumulator(self) -> Tally:
    return Tally(self.k)

  def add_input(self, acc: Tally, tally: Tally) -> Tally:
    return acc.merge(tally)

  def merge_accumulators(self, accs: Iterable[Tally]) -> Tally:
    out = Tally(self.k)
    for acc in accs:
      out.merge(acc)
    return out

  def extract_output(self, acc: Tally) -> Tally:
    return acc


def run_beam(specs: Sequence[ShardSpec], out_dir: str, config: CurationConfig,
             index: ContaminationIndex | None,
             beam_args: Sequence[str] | None = None) -> Tally:
  """Runs the pipeline to completion; returns the merged tally."""
  args = list(beam_args) if beam_args else [
      "--runner=DirectRunner", "--direct_num_workers=1",
      "--direct_running_mode=in_memory"]
  mh = config.near_dedup.minhash
  tally_path = f"{out_dir}/_work/tally.json"
  with beam.Pipeline(options=PipelineOptions(args)) as p:
    shards = (p | "Shards" >> beam.Create([(s.name, s) for s in specs])
              | "Spread" >> beam.Reshuffle())
    p1 = shards | "Phase1" >> beam.ParDo(_Phase1(config)).with_outputs(
        "removed", "tally", main="survivors")
    survivors = p1.survivors
    tallies = [p1.tally]

    if config.exact_dedup.enabled:
      by_hash = (survivors
                 | "HashKey" >> beam.Map(lambda r: (r["hash"], _member(
                     r, config.keep_priority)))
                 | "GroupHash" >> beam.GroupByKey())
      exact = by_hash | "Exact" >> beam.FlatMap(_exact)
      tallies.append(
          by_hash
          | "ExactSizes" >> beam.Map(lambda kv: len(list(kv[1])))
          | "OnlyDups" >> beam.Filter(lambda n: n > 1)
          | "SizeTally" >> beam.combiners.Count.PerElement()
          | "ToTally" >> beam.Map(_size_tally, "exact_cluster_size"))
    else:
      exact = p | "NoExact" >> beam.Create([])

    if config.near_dedup.enabled:
      edges = (survivors
               | "Bands" >> beam.FlatMap(_bands, beam.pvalue.AsDict(exact), mh,
                                         config.keep_priority)
               | "GroupBand" >> beam.GroupByKey()
               | "Star" >> beam.FlatMap(_star))
      if mh.verify_threshold is not None:
        sigs = survivors | "SigByKey" >> beam.Map(
            lambda r: ((r["shard"], r["idx"]), r["sig"]))
        heads = ({"sig": sigs, "edges": edges | "ByHead" >> beam.Map(
            lambda e: (e[0][1], e))} | "JoinHead" >> beam.CoGroupByKey()
                 | "HeadSig" >> beam.FlatMap(_with_first_sig))
        edges = ({"sig": sigs, "edges": heads}
                 | "JoinTail" >> beam.CoGroupByKey()
                 | "Verify" >> beam.FlatMap(_verified, mh.verify_threshold))
      near = (edges
              | "Edges" >> beam.combiners.ToList()
              | "Components" >> beam.FlatMap(_components).with_outputs(
                  "tally", main="verdicts"))
      tallies.append(near.tally)
      verdicts = (exact, near.verdicts) | "Verdicts" >> beam.Flatten()
    else:
      verdicts = exact

    grouped = ({"spec": shards,
                "records": survivors | "ByShard" >> beam.Map(
                    lambda r: (r["shard"], r)),
                "removed": p1.removed,
                "verdicts": verdicts | "VerdictByShard" >> beam.Map(
                    lambda kv: (kv[0][0], (kv[0][1], kv[1])))}
               | "Join" >> beam.CoGroupByKey())
    tallies.append(grouped | "Phase2" >> beam.ParDo(
        _Phase2(config, index, out_dir)))

    _ = (tallies | "AllTallies" >> beam.Flatten()
         | "Merge" >> beam.CombineGlobally(
             _MergeTallies(config.examples_per_reason))
         | "Save" >> beam.Map(lambda t: _write(
             tally_path, json.dumps(t.to_json()).encode("utf-8"))))

  with FileSystems.open(tally_path) as f:
    return Tally.from_json(json.loads(f.read().decode("utf-8")))


def _size_tally(element: tuple[int, int], name: str) -> Tally:
  size, count = element
  tally = Tally()
  tally.counters[(name, str(size))] = count
  return tally
