"""Provision what a depthlab cluster needs on AWS: three buckets and the nodes' IAM role.

    python infra/provision.py --name depthlab [--region us-west-2] [--data-prefix imagenet/]
                              [--checkpoint-days 30] [--dry-run]

- ``<name>-data`` (shards), ``<name>-checkpoints`` (Ray Train storage), ``<name>-mlflow``
  (MLflow artifacts): default encryption on (SSE-S3), every public access blocked; on the
  checkpoint bucket a lifecycle rule expires objects after ``--checkpoint-days`` days.
- the role ``<name>-node`` (EC2 may assume it) and its instance profile, with one inline policy
  of least privilege: read the data prefix; read and write the checkpoint and artifact buckets;
  nothing else.
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


def _code(exc) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def provision(name: str, *, region: str, data_prefix: str, checkpoint_days: int,
              dry_run: bool = False) -> list[str]:
    """Create what is missing; return one line per thing checked or done."""
    buckets = bucket_names(name)
    role, policy = f"{name}-node", node_policy(buckets, data_prefix)
    if dry_run:
        lines = [f"would ensure bucket {b} (SSE-S3, public access blocked)" for b in buckets.values()]
        lines.append(f"would expire objects in {buckets['checkpoints']} after {checkpoint_days} days")
        lines.append(f"would ensure role and instance profile {role} with policy:\n"
                     + json.dumps(policy, indent=1))
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

    try:
        iam.get_role(RoleName=role)
        lines.append(f"role {role}: exists")
    except iam.exceptions.NoSuchEntityException:
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                        Description="depthlab cluster nodes")
        lines.append(f"role {role}: created")
    iam.put_role_policy(RoleName=role, PolicyName=f"{name}-node-s3",
                        PolicyDocument=json.dumps(policy))
    try:
        profile = iam.get_instance_profile(InstanceProfileName=role)["InstanceProfile"]
        lines.append(f"instance profile {role}: exists")
    except iam.exceptions.NoSuchEntityException:
        profile = iam.create_instance_profile(InstanceProfileName=role)["InstanceProfile"]
        lines.append(f"instance profile {role}: created")
    if role not in {r["RoleName"] for r in profile.get("Roles", [])}:
        iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="depthlab", help="prefix of the buckets and the role")
    p.add_argument("--region", default="us-west-2")
    p.add_argument("--data-prefix", default="", help="the part of the data bucket nodes may read")
    p.add_argument("--checkpoint-days", type=int, default=30)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    try:
        for line in provision(args.name, region=args.region, data_prefix=args.data_prefix,
                              checkpoint_days=args.checkpoint_days, dry_run=args.dry_run):
            print(line)
    except Exception as exc:  # credentials, permissions, endpoint: one message, not a traceback
        print(f"provision: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
