"""Provision what a depthlab cluster needs on AWS: three buckets and the nodes' IAM role.

    python infra/provision.py --name depthlab --bucket-prefix YOUR-PREFIX [--region us-west-2]
                              [--data-prefix imagenet/] [--checkpoint-days 30] [--dry-run]

- ``<prefix>-data`` (shards), ``<prefix>-checkpoints`` (Ray Train storage), ``<prefix>-mlflow``
  (MLflow artifacts; bucket names are global, so the prefix is yours: it defaults to the name): default encryption on (SSE-S3), every public access blocked; on the
  checkpoint bucket a lifecycle rule expires objects after ``--checkpoint-days`` days.
- the role ``<name>-node`` (EC2 may assume it) and its instance profile, with one inline policy
  of least privilege: read the data prefix; read and write the checkpoint and artifact buckets;
  nothing else. The GPU workers run with it.
- the role ``<name>-head`` and its instance profile, for the head node: the node's S3 rights
  plus what Ray's autoscaler does from there: launch, tag and terminate the cluster's
  instances, hand them ``<name>-node`` (iam:PassRole) and resolve the AMI's public SSM
  parameter.
Idempotent: what exists is checked and left as it is, what is missing is created. ``--dry-run``
prints the plan and calls nothing. Credentials and endpoint come from the standard AWS variables
(``AWS_ENDPOINT_URL`` points it at a test server).
"""

from __future__ import annotations

import argparse
import json
import sys

EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


def bucket_names(name: str) -> dict[str, str]:
    return {"data": f"{name}-data", "checkpoints": f"{name}-checkpoints", "mlflow": f"{name}-mlflow"}


def node_policy(buckets: dict[str, str], data_prefix: str) -> dict:
    """Least privilege for a node: read the shards; read and write checkpoints and artifacts."""
    prefix = data_prefix.strip("/")
    data_objects = f"arn:aws:s3:::{buckets['data']}/{prefix + '/' if prefix else ''}*"
    writable = [buckets["checkpoints"], buckets["mlflow"]]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadShards", "Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": [data_objects]},
            {"Sid": "ListShards", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [f"arn:aws:s3:::{buckets['data']}"],
             **({"Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}}} if prefix else {})},
            {"Sid": "CheckpointsAndArtifacts", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                        "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
             "Resource": [f"arn:aws:s3:::{b}/*" for b in writable]},
            {"Sid": "ListCheckpointsAndArtifacts", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [f"arn:aws:s3:::{b}" for b in writable]},
        ],
    }


def head_policy(name: str, node_role_arn: str) -> dict:
    """What Ray's autoscaler on the head node calls (its AWS node provider), and no more."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "LaunchAndDescribe", "Effect": "Allow",
             "Action": ["ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances",
                        "ec2:DescribeInstanceTypes", "ec2:DescribeImages"],
             "Resource": ["*"]},
            # Only this cluster's instances (Ray tags every node it launches with the name).
            {"Sid": "TerminateOwnNodes", "Effect": "Allow",
             "Action": ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"],
             "Resource": ["*"],
             "Condition": {"StringEquals": {"ec2:ResourceTag/ray-cluster-name": name}}},
            {"Sid": "PassNodeRole", "Effect": "Allow", "Action": ["iam:PassRole"],
             "Resource": [node_role_arn]},
            # ImageId: resolve:ssm:... in infra/aws/cluster.yaml (AWS's public AMI parameters).
            {"Sid": "ResolveAmi", "Effect": "Allow", "Action": ["ssm:GetParameters"],
             "Resource": ["arn:aws:ssm:*::parameter/aws/service/*"]},
        ],
    }


def _code(exc) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def provision(name: str, *, region: str, data_prefix: str, checkpoint_days: int,
              dry_run: bool = False, bucket_prefix: str | None = None) -> list[str]:
    """Create what is missing; return one line per thing checked or done."""
    buckets = bucket_names(bucket_prefix or name)
    node, head = f"{name}-node", f"{name}-head"
    policy = node_policy(buckets, data_prefix)
    if dry_run:
        lines = [f"would ensure bucket {b} (SSE-S3, public access blocked)" for b in buckets.values()]
        lines.append(f"would expire objects in {buckets['checkpoints']} after {checkpoint_days} days")
        lines.append(f"would ensure role and instance profile {node} with policy:\n"
                     + json.dumps(policy, indent=1))
        lines.append(f"would ensure role and instance profile {head} with the same policy and:\n"
                     + json.dumps(head_policy(name, f"arn:aws:iam::ACCOUNT:role/{node}"), indent=1))
        return lines

    import boto3

    s3, iam = boto3.client("s3", region_name=region), boto3.client("iam", region_name=region)
    lines = []
    for bucket in buckets.values():
        try:
            s3.head_bucket(Bucket=bucket)
            lines.append(f"bucket {bucket}: exists")
        except Exception as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            kwargs = {} if region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=bucket, **kwargs)
            lines.append(f"bucket {bucket}: created")
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
    s3.put_bucket_lifecycle_configuration(Bucket=buckets["checkpoints"], LifecycleConfiguration={
        "Rules": [{"ID": "expire-old-checkpoints", "Status": "Enabled", "Filter": {"Prefix": ""},
                   "Expiration": {"Days": checkpoint_days},
                   "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]})
    lines.append(f"lifecycle: {buckets['checkpoints']} expires objects after {checkpoint_days} days")

    node_arn = _ensure_role(iam, node, {f"{name}-node-s3": policy}, "depthlab GPU worker nodes", lines)
    _ensure_role(iam, head, {f"{name}-node-s3": policy,
                             f"{name}-head-autoscaler": head_policy(name, node_arn)},
                 "depthlab head node (drivers and Ray's autoscaler)", lines)
    return lines


def _ensure_role(iam, role: str, policies: dict[str, dict], description: str,
                 lines: list[str]) -> str:
    """The role, its inline policies and its instance profile (same name); returns its ARN."""
    try:
        arn = iam.get_role(RoleName=role)["Role"]["Arn"]
        lines.append(f"role {role}: exists")
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                              Description=description)["Role"]["Arn"]
        lines.append(f"role {role}: created")
    for policy_name, document in policies.items():
        iam.put_role_policy(RoleName=role, PolicyName=policy_name,
                            PolicyDocument=json.dumps(document))
    try:
        profile = iam.get_instance_profile(InstanceProfileName=role)["InstanceProfile"]
        lines.append(f"instance profile {role}: exists")
    except iam.exceptions.NoSuchEntityException:
        profile = iam.create_instance_profile(InstanceProfileName=role)["InstanceProfile"]
        lines.append(f"instance profile {role}: created")
    if role not in {r["RoleName"] for r in profile.get("Roles", [])}:
        iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
    return arn


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="depthlab",
                   help="prefix of the roles (infra/aws/cluster.yaml names depthlab-head/-node)")
    p.add_argument("--bucket-prefix", help="prefix of the three buckets (default: --name); "
                   "bucket names are global, so pick one of your own")
    p.add_argument("--region", default="us-west-2")
    p.add_argument("--data-prefix", default="", help="the part of the data bucket nodes may read")
    p.add_argument("--checkpoint-days", type=int, default=30)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    try:
        for line in provision(args.name, region=args.region, data_prefix=args.data_prefix,
                              checkpoint_days=args.checkpoint_days, dry_run=args.dry_run,
                              bucket_prefix=args.bucket_prefix):
            print(line)
    except Exception as exc:  # credentials, permissions, endpoint: one message, not a traceback
        print(f"provision: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
