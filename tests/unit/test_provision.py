"""infra/provision.py against moto's server (S3 and IAM over HTTP)."""

import json
import sys
from pathlib import Path

import boto3
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
import provision  # noqa: E402


def test_policy_is_least_privilege():
    policy = provision.node_policy(provision.bucket_names("x"), "imagenet/")
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert "s3:*" not in actions and not any(a.startswith("iam:") for a in actions)
    read = next(s for s in policy["Statement"] if s["Sid"] == "ReadShards")
    assert read["Action"] == ["s3:GetObject"] and read["Resource"] == ["arn:aws:s3:::x-data/imagenet/*"]
    writes = [s for s in policy["Statement"] if "s3:PutObject" in s["Action"]]
    assert all("x-data" not in r for s in writes for r in s["Resource"])  # data is read-only


def test_dry_run_calls_nothing(monkeypatch):
    monkeypatch.setattr(boto3, "client", lambda *a, **k: pytest.fail("dry run called AWS"))
    lines = provision.provision("x", region="us-west-2", data_prefix="", checkpoint_days=7, dry_run=True)
    assert any("would ensure bucket x-checkpoints" in line for line in lines)


def test_provisioning_is_idempotent(s3_server):
    first = provision.provision("prov", region="us-east-1", data_prefix="imagenet",
                                checkpoint_days=14)
    assert "bucket prov-data: created" in first and "role prov-node: created" in first
    again = provision.provision("prov", region="us-east-1", data_prefix="imagenet",
                                checkpoint_days=14)
    assert "bucket prov-data: exists" in again and "instance profile prov-node: exists" in again
    s3, iam = boto3.client("s3"), boto3.client("iam")
    for b in ("prov-data", "prov-checkpoints", "prov-mlflow"):
        enc = s3.get_bucket_encryption(Bucket=b)["ServerSideEncryptionConfiguration"]["Rules"][0]
        assert enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert all(s3.get_public_access_block(Bucket=b)["PublicAccessBlockConfiguration"].values())
    rule = s3.get_bucket_lifecycle_configuration(Bucket="prov-checkpoints")["Rules"][0]
    assert rule["Expiration"]["Days"] == 14
    doc = iam.get_role_policy(RoleName="prov-node", PolicyName="prov-node-s3")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    assert doc == provision.node_policy(provision.bucket_names("prov"), "imagenet")
    profile = iam.get_instance_profile(InstanceProfileName="prov-node")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["prov-node"]
