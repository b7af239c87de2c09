"""`ray up infra/aws/cluster.yaml`, rehearsed offline against moto's EC2/IAM/S3 server.

Ray's own bootstrap (what `ray up` runs before it launches anything) resolves the shipped
config, and Ray's own AWS node provider launches every node type, with the head node's
permissions: moto checks every call against the IAM policies infra/provision.py writes (its
authorisation mode, on after the first four calls that make an admin). The spot fallback runs
through Ray's node launcher and scheduler with the scorer the head is started with.
"""

from __future__ import annotations

import copy
import json
import re
from functools import partial
from pathlib import Path

import boto3
import pytest
import yaml

from infra.local.services import free_port, start_moto, stop

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "infra" / "aws" / "cluster.yaml"
ADMIN_POLICY = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]


def _clear_ray_aws_caches():
    from ray.autoscaler._private.aws import utils

    utils.resource_cache.cache_clear()
    utils.client_cache.cache_clear()


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """A moto server enforcing IAM, the buckets and roles of infra/provision.py in it, and the
    access keys of an admin (who runs `ray up`) and of users holding exactly the head's and the
    node's policies (moto cannot hand out role sessions, so the policies go to users)."""
    import sys

    sys.path.insert(0, str(REPO / "infra"))
    import provision

    folder = tmp_path_factory.mktemp("aws")
    mp = pytest.MonkeyPatch()
    port = free_port()
    proc = start_moto(port, folder / "moto.log", env={
        **__import__("os").environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        mp.setenv("AWS_DEFAULT_REGION", "us-west-2")
        mp.setenv("AWS_ACCESS_KEY_ID", "bootstrap")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "bootstrap")
        mp.setenv("HOME", str(folder))  # Ray's bootstrap writes the key pair under ~/.ssh
        mp.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials it first saw
        _clear_ray_aws_caches()
        iam = boto3.client("iam")
        iam.create_user(UserName="admin")  # the four calls before moto enforces IAM
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        arn = iam.create_policy(PolicyName="admin", PolicyDocument=json.dumps(ADMIN_POLICY))
        iam.attach_user_policy(UserName="admin", PolicyArn=arn["Policy"]["Arn"])
        mp.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        mp.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        boto3.DEFAULT_SESSION = None
        lines = provision.provision("depthlab", region="us-west-2", data_prefix="imagenet",
                                    checkpoint_days=7)
        assert "instance profile depthlab-head: created" in lines
        iam = boto3.client("iam")
        keys = {}
        for role in ("depthlab-head", "depthlab-node"):
            iam.create_user(UserName=role)
            for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
                iam.put_user_policy(UserName=role, PolicyName=name,
                                    PolicyDocument=doc if isinstance(doc, str) else json.dumps(doc))
            k = iam.create_access_key(UserName=role)["AccessKey"]
            keys[role] = {"aws_access_key_id": k["AccessKeyId"],
                          "aws_secret_access_key": k["SecretAccessKey"]}
        keys["admin"] = {"aws_access_key_id": key["AccessKeyId"],
                         "aws_secret_access_key": key["SecretAccessKey"]}
        yield {"keys": keys, "folder": folder}
    finally:
        _clear_ray_aws_caches()
        mp.undo()
        boto3.DEFAULT_SESSION = None
        stop(proc)


def bootstrap(config: dict, keys: dict) -> dict:
    """What `ray up` does to the config before it launches a node."""
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = copy.deepcopy(config)
    config["provider"]["aws_credentials"] = keys
    validate_config(config)
    return bootstrap_aws(prepare_config(config))


def provider_as(config: dict, keys: dict):
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    return AWSNodeProvider(dict(config["provider"], aws_credentials=keys), config["cluster_name"])


def launch(provider, config: dict, node_type: str) -> str:
    tags = {"ray-node-kind": "worker", "ray-user-node-type": node_type,
            "ray-node-name": f"ray-{config['cluster_name']}-worker"}
    (node_id,) = provider.create_node(config["available_node_types"][node_type]["node_config"],
                                      tags, 1)
    return node_id


def shipped() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_ray_up_resolves_every_node_type_of_the_shipped_config(aws):
    config = bootstrap(shipped(), aws["keys"]["admin"])
    ec2, iam = boto3.client("ec2"), boto3.client("iam")
    subnets = {s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
    profiles = {p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]}
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert node["SubnetIds"] and set(node["SubnetIds"]) <= subnets, name
        (group,) = node["SecurityGroupIds"]
        assert node["IamInstanceProfile"]["Name"] in profiles, name
        assert node["KeyName"].startswith("ray-autoscaler"), name
        # EC2 resolves the AMI from AWS's public parameter at launch (moto cannot: it keeps the
        # reference as it is), so Ray's default DLAMI with Python 3.6 is never used.
        assert node["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/"), name
        assert re.search(r"ubuntu-2[2-9]\.04", node["ImageId"]), name  # Python >= 3.10
    # The head runs the autoscaler with its own profile; workers get the S3-only one.
    types = config["available_node_types"]
    assert types["head"]["node_config"]["IamInstanceProfile"]["Name"] == "depthlab-head"
    assert {t["node_config"]["IamInstanceProfile"]["Name"] for n, t in types.items()
            if n != "head"} == {"depthlab-node"}
    # Ray's security group lets the nodes reach each other on every port (NCCL, EFA, Ray).
    (sg,) = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
    assert any(rule["IpProtocol"] == "-1" and any(p["GroupId"] == group for p in
               rule.get("UserIdGroupPairs", [])) for rule in sg["IpPermissions"])


def test_the_head_launches_and_removes_every_node_type_and_a_worker_could_not(aws):
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    config = bootstrap(shipped(), aws["keys"]["admin"])
    with pytest.raises(NodeLaunchException, match="not authorized to perform: ec2:RunInstances"):
        launch(provider_as(config, aws["keys"]["depthlab-node"]), config, "gpu_small_spot")

    head = provider_as(config, aws["keys"]["depthlab-head"])
    launched = {name: launch(head, config, name) for name in config["available_node_types"]
                if name != "head"}
    ec2 = boto3.client("ec2")
    found = {i["InstanceId"]: i for r in ec2.describe_instances(
        InstanceIds=list(launched.values()))["Reservations"] for i in r["Instances"]}
    for name, node_id in launched.items():
        instance = found[node_id]
        node = config["available_node_types"][name]["node_config"]
        assert instance["InstanceType"] == node["InstanceType"]
        spot = node.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        assert (instance.get("InstanceLifecycle") == "spot") == spot, name
        assert instance["IamInstanceProfile"]["Arn"].endswith("/depthlab-node")
        assert instance["ImageId"] == node["ImageId"]
    assert set(head.non_terminated_nodes({})) >= set(launched.values())
    head.terminate_nodes(list(launched.values()))
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances(
        InstanceIds=list(launched.values()))["Reservations"] for i in r["Instances"]}
    assert set(states.values()) <= {"shutting-down", "terminated"}


def efa_lines_from_the_guide() -> dict:
    """The node_config lines docs/cluster.md tells a user to add for EFA."""
    text = (REPO / "docs" / "cluster.md").read_text()
    block = text.split("<!-- efa-node-config -->", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


def test_the_guides_efa_lines_pass_rays_bootstrap_and_launch_an_efa_interface(aws):
    first = bootstrap(shipped(), aws["keys"]["admin"])
    node = first["available_node_types"]["gpu_large"]["node_config"]
    fill = {"YOUR-SUBNET-ID": node["SubnetIds"][0], "YOUR-SECURITY-GROUP-ID": node["SecurityGroupIds"][0]}
    text = yaml.safe_dump(efa_lines_from_the_guide())
    for placeholder, value in fill.items():
        assert placeholder in text
        text = text.replace(placeholder, value)
    config = shipped()
    for name, lines in yaml.safe_load(text).items():
        config["available_node_types"][name]["node_config"].update(lines)
    config = bootstrap(config, aws["keys"]["admin"])
    head = provider_as(config, aws["keys"]["depthlab-head"])
    node_id = launch(head, config, "gpu_large")
    (reservation,) = boto3.client("ec2").describe_instances(InstanceIds=[node_id])["Reservations"]
    (interface,) = reservation["Instances"][0]["NetworkInterfaces"]
    assert interface["SubnetId"] == fill["YOUR-SUBNET-ID"]
    assert {g["GroupId"] for g in interface["Groups"]} == {fill["YOUR-SECURITY-GROUP-ID"]}
    head.terminate_nodes([node_id])


def test_a_failed_spot_launch_moves_the_next_choice_to_the_on_demand_twin(aws, tmp_path, monkeypatch):
    from botocore.awsrequest import AWSResponse
    from ray.autoscaler._private.event_summarizer import EventSummarizer
    from ray.autoscaler._private.node_launcher import BaseNodeLauncher
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeProviderAvailabilityTracker,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        ResourceDemandScheduler,
        get_nodes_for,
    )
    from ray.autoscaler._private.util import ConcurrentCounter

    config = bootstrap(shipped(), aws["keys"]["admin"])
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DEPTHLAB_AUTOSCALER_CONFIG", str(tmp_path / "ray_bootstrap_config.yaml"))
    head_command = " ".join(config["head_start_ray_commands"])
    scorer = re.search(r"RAY_AUTOSCALER_UTILIZATION_SCORER=(\S+)", head_command).group(1)
    types, head_type = config["available_node_types"], config["head_node_type"]
    demand = [{"CPU": 8, "GPU": 1}] * 4  # one run of four GPU workers, gang-scheduled

    def choice(scorer_path: str | None, tracker) -> dict:
        if scorer_path:
            monkeypatch.setenv("RAY_AUTOSCALER_UTILIZATION_SCORER", scorer_path)
        else:
            monkeypatch.delenv("RAY_AUTOSCALER_UTILIZATION_SCORER", raising=False)
        scheduler = ResourceDemandScheduler(None, types, config["max_workers"], head_type, 1.0)
        chosen, _ = get_nodes_for(types, {}, head_type, 10, demand, partial(
            scheduler.utilization_scorer, node_availability_summary=tracker.summary()))
        return chosen

    tracker = NodeProviderAvailabilityTracker()
    assert choice(scorer, tracker) == {"gpu_small_spot": 1}

    # No spot capacity: the one fault moto cannot produce, injected into the RunInstances call.
    provider = provider_as(config, aws["keys"]["depthlab-head"])
    events = provider.ec2_fail_fast.meta.client.meta.events

    def no_spot_capacity(params, **_):  # params: the serialised request
        if "InstanceMarketOptions" in str(params.get("body")):
            return (AWSResponse("", 500, {}, None), {"Error": {
                "Code": "InsufficientInstanceCapacity",
                "Message": "There is no Spot capacity available that matches your request."}})
        return None

    events.register("before-call.ec2.RunInstances", no_spot_capacity)
    try:
        launcher = BaseNodeLauncher(provider, ConcurrentCounter(), EventSummarizer(), tracker,
                                    node_types=types)
        launcher.pending.inc("gpu_small_spot", 1)
        assert not launcher.launch_node(config, 1, "gpu_small_spot")
    finally:
        events.unregister("before-call.ec2.RunInstances", no_spot_capacity)
    record = tracker.summary().node_availabilities["gpu_small_spot"]
    assert not record.is_available
    assert record.unavailable_node_information.category == "InsufficientInstanceCapacity"

    # Ray's default scorer would ask for spot again; the head's scorer asks for on-demand.
    assert choice(None, tracker) == {"gpu_small_spot": 1}
    assert choice(scorer, tracker) == {"gpu_small_ondemand": 1}
    launcher.pending.inc("gpu_small_ondemand", 1)
    created = launcher.launch_node(config, 1, "gpu_small_ondemand")
    assert created and tracker.summary().node_availabilities["gpu_small_ondemand"].is_available
    provider.terminate_nodes(list(created))


def test_every_cluster_path_runs_the_same_ray():
    """The AWS nodes, the image (KubeRay, RayJob) and the RayCluster's declared version."""
    config = shipped()
    pins = set(re.findall(r'ray\[[a-z,]+\]==([0-9.]+)', " ".join(config["setup_commands"])))
    image = re.search(r"FROM rayproject/ray:([0-9.]+)-", (REPO / "Dockerfile").read_text()).group(1)
    cluster = yaml.safe_load((REPO / "infra" / "k8s" / "raycluster.yaml").read_text())
    assert pins == {image} == {cluster["spec"]["rayVersion"]}


def test_start_commands_survive_a_second_ray_up_and_set_efa_only_where_it_exists():
    config = shipped()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = config[key]
        assert "ray stop" in commands[0] and "ray start" in commands[-1]
        assert "ulimit -n 65536" in commands[-1] and "RAY_AUTH_MODE=token" in commands[-1]
    worker = " ".join(config["worker_start_ray_commands"])
    # The EFA variables only inside the test for an EFA device.
    assert worker.count("FI_PROVIDER") == 1 and re.search(
        r"if [^;]*fi_info -p efa[^;]*; then export FI_PROVIDER=efa [^;]*; fi", worker)


def test_the_guide_makes_every_file_ray_up_copies_before_it_runs_ray_up():
    text = (REPO / "docs" / "cluster.md").read_text()
    block = text.split("<!-- aws-guide -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    steps = [line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    up = next(i for i, s in enumerate(steps) if s.startswith("ray up infra/aws/cluster.yaml"))
    before = "\n".join(steps[:up])
    for source in shipped()["file_mounts"].values():
        if source == ".":
            continue
        made = {"~/.ray/auth_token": "ray get-auth-token --generate"}.get(source, f"> {source}")
        assert made in before, source
