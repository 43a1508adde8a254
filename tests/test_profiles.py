"""profiles/slurm as Snakemake reads it: where each rule's jobs go, taken from the environment, never hard-coded."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles/slurm/config.yaml"


def read_profile(monkeypatch, **env: str) -> dict:
    """The profile's arguments as Snakemake's own profile parser gives them, under these DISTILLERY_SLURM_* values."""
    from snakemake.profiles import ProfileConfigFileParser

    for name in [name for name in os.environ if name.startswith("DISTILLERY_SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(f"DISTILLERY_SLURM_{name}", value)
    with PROFILE.open() as stream:
        return ProfileConfigFileParser().parse(stream)


def set_resources(profile: dict) -> dict[str, dict[str, str]]:
    rules: dict[str, dict[str, str]] = {}
    for entry in profile.get("set-resources", []):
        rule, assignment = entry.split(":", 1)
        name, value = assignment.split("=", 1)
        rules.setdefault(rule, {})[name] = value.strip("'\"")
    return rules


def test_every_rule_has_an_entry(monkeypatch):
    """Rules made with `use rule ... as NAME` too; a `localrule: True` runs where Snakemake does, on no partition."""
    profile = read_profile(monkeypatch, PARTITION="cpu")
    blocks = [block for p in (REPO / "rules").glob("*.smk") for block in re.split(r"\n(?=\S)", p.read_text())]
    declared = {
        m.group(1)
        for block in blocks
        if (m := re.match(r"(?:rule|checkpoint|use rule \w+ as) (\w+)(?: with)?:", block))
        and "localrule: True" not in block
    }
    assert {"hf_merge", "kd_chunk", "kd_dataset_parquet"} <= declared and "fetch_wheel" not in declared
    future = {
        "maxtext_param_only",
        "maxtext_to_hf",
        "titan_to_hf",
        "kd_manifest",
        "kd_chunk",
        "kd_dataset",
        "icm_labels",
    }
    assert declared | future <= set(set_resources(profile))


def test_a_new_formats_rules_are_placed_from_its_registry_entry_alone(monkeypatch):
    """The profile names no conversion rule: each format's entry says what its jobs need (`runs_on`)."""
    from workflow_scripts.convert import registry

    new = registry.SourceFormat("megatron", "megatron_to_hf", registry.CONSOLIDATE, prepare_rule="megatron_merge_tp")
    monkeypatch.setitem(registry.FORMATS, "megatron", new)
    rules = set_resources(read_profile(monkeypatch, PARTITION="cpu", HIGHMEM_PARTITION="bigmem", TPU_PARTITION="tpu"))
    assert rules["megatron_to_hf"] == rules["megatron_merge_tp"] == rules["hf_merge"] == {"slurm_partition": "bigmem"}
    assert rules["maxtext_to_hf"] == {"slurm_partition": "tpu"}  # runs_on="tpu"


def test_nothing_names_a_cluster_when_the_environment_does_not(monkeypatch):
    profile = read_profile(monkeypatch)
    # No partition, no account: the plugin takes the cluster's default partition and guesses the account.
    assert not any(entry.startswith(("slurm_partition", "slurm_account")) for entry in profile["default-resources"])
    assert all("slurm_partition" not in resources for resources in set_resources(profile).values())


def test_jobs_go_to_the_partition_their_work_needs(monkeypatch):
    profile = read_profile(
        monkeypatch, PARTITION="cpu", ACCOUNT="proj", HIGHMEM_PARTITION="bigmem", GPU_PARTITION="gpu", GPU_MODEL="h100"
    )
    assert {"slurm_partition=cpu", "slurm_account=proj"} <= set(profile["default-resources"])
    rules = set_resources(profile)
    assert rules["verify_model"] == {"slurm_partition": "cpu"}
    assert rules["hf_merge"] == rules["deepspeed_consolidate"] == {"slurm_partition": "bigmem"}
    assert rules["maxtext_to_hf"] == {"slurm_partition": "bigmem"}
    gpu = {"slurm_partition": "gpu", "gpu_model": "h100"}
    assert rules["kd_engine"] == rules["kd_chunk"] == rules["icm_labels"] == gpu
    # GPU counts, memory and time come from the rules (tensor x pipeline size, checkpoint size), not from here.
    assert not any({"gpu", "mem_mb", "runtime"} & set(resources) for resources in rules.values())


def test_specific_partitions_fall_back_to_the_general_one(monkeypatch):
    rules = set_resources(read_profile(monkeypatch, PARTITION="batch"))
    assert {resources["slurm_partition"] for resources in rules.values()} == {"batch"}


def test_maxtext_conversions_go_to_tpu_vms_where_the_cluster_has_them(monkeypatch):
    rules = set_resources(read_profile(monkeypatch, PARTITION="cpu", TPU_PARTITION="tpu", TPU_CONSTRAINT="v5e-8"))
    assert rules["maxtext_param_only"] == rules["maxtext_to_hf"] == {"slurm_partition": "tpu", "constraint": "v5e-8"}
    assert rules["hf_merge"] == {"slurm_partition": "cpu"}


@pytest.mark.parametrize(("env", "gpus"), [({}, "8"), ({"GPUS_PER_NODE": "4"}, "4")])
def test_an_engine_job_and_its_chunks_share_one_allocation_capped_at_a_node(monkeypatch, env, gpus):
    profile = read_profile(monkeypatch, **env)
    assert profile["groups"] == ["kd_engine=kd_engines", "kd_chunk=kd_engines"]
    assert profile["group-components"] == ["kd_engines=1"]
    assert profile["resources"] == [f"gpu={gpus}"]
    assert profile["set-resource-scopes"] == ["gpu=local"]


SLURM_VARIABLES = re.findall(r"^#   (DISTILLERY_SLURM_\w+)", PROFILE.read_text(), re.M)


def evaluated_profile(monkeypatch, **variables) -> dict:
    """profiles/slurm/config.yaml as Snakemake reads it (yte), with only these DISTILLERY_SLURM_* variables set."""
    import yte

    for name in [name for name in os.environ if name.startswith("DISTILLERY_SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with PROFILE.open() as profile:
        return yte.process_yaml(profile, require_use_yte=True)


@pytest.mark.parametrize("variable", [None, *SLURM_VARIABLES])
def test_the_profile_has_no_empty_option_with_no_variable_or_any_one(variable, monkeypatch):
    """Unset variables mean the cluster's defaults. An option the profile leaves empty (`set-resources: []`, the
    bug) is one Snakemake's command line refuses, so none may be empty whatever subset is set."""
    value = "4" if variable and variable.endswith(("_PER_NODE", "_PER_JOB")) else "value"
    profile = evaluated_profile(monkeypatch, **({variable: value} if variable else {}))
    assert not empty_settings(profile), f"empty settings with {variable or 'no variable'}: {empty_settings(profile)}"


def empty_settings(node, where: str = "") -> list[str]:
    """The options (and an option's entries, e.g. a rule of set-resources) that hold nothing."""
    if isinstance(node, (list, dict, str)) and not node:
        return [where]
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [path for key, child in children for path in empty_settings(child, f"{where}/{key}")]


@pytest.mark.integration
@pytest.mark.parametrize("variables", ["none", "all"])
def test_the_profile_plans_with_no_variable_or_all(variables, tmp_path_factory):
    """`snakemake -n --profile profiles/slurm` itself, with none of the variables and with every one."""
    import yaml
    from helpers.snakemake_runs import planned_jobs, repository_copy, snakemake_in

    repository = repository_copy(tmp_path_factory.mktemp("repository"))
    config = {"tiny_models": {"src": {}}, "models": {"m": {"source": {"format": "hf", "path": "work/sources/src"}}}}
    (repository / "my.yaml").write_text(yaml.safe_dump(config))
    env = {name: value for name, value in os.environ.items() if not name.startswith("DISTILLERY_SLURM_")}
    if variables == "all":
        env.update({name: "4" if name.endswith(("_PER_NODE", "_PER_JOB")) else "value" for name in SLURM_VARIABLES})
    result = snakemake_in(repository, "-n", "--profile", "profiles/slurm", "--configfile", "my.yaml", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [rule for rule, _ in planned_jobs(result)] == [
        "build_tiny_model",
        "hf_merge",
        "report_model",
        "verify_model",
    ]
