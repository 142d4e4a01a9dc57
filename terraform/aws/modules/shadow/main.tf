# A Shadow cluster on AWS: var.master_count masters (several share RDS PostgreSQL behind an
# internal load balancer, database.tf), one edge, var.node_count nodes started from a launch
# template (which the edge also uses to replace dead nodes), an S3 bucket for `s3` volumes, and the
# API token in SSM Parameter Store. See docs/operations.md.

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

# The latest official Debian 12 image (account 136693071363 is Debian's).
data "aws_ami" "debian" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["136693071363"]

  filter {
    name   = "name"
    values = ["debian-12-${var.architecture == "arm64" ? "arm64" : "amd64"}-*"]
  }
  filter {
    name   = "architecture"
    values = [var.architecture]
  }
  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

# The chosen image, for its root device name.
data "aws_ami" "selected" {
  filter {
    name   = "image-id"
    values = [local.ami_id]
  }
}

locals {
  partition = data.aws_partition.current.partition
  region    = data.aws_region.current.id
  account   = data.aws_caller_identity.current.account_id
  ami_id    = var.ami_id != null ? var.ami_id : data.aws_ami.debian[0].id

  tags = merge(var.tags, { "shadow-cluster" = var.name })

  # Instances carrying this tag (value: var.name) are this cluster's nodes: the edge may terminate
  # them and the nodes may attach volumes to them.
  node_tag = "shadow-node"
  # EBS volumes and snapshots carrying this tag (value: var.name) are the `ebs` backend's: the nodes
  # may attach, detach, snapshot and delete those and no others. Nothing Terraform makes carries it
  # (not the instances' root volumes). The `ebs` backend must set it on what it creates.
  volume_tag = "shadow-volume"

  token_parameter = coalesce(var.api_token_parameter_name, "/${var.name}/api-token")

  # The systemd units are contrib/systemd's, so the fleet runs what the docs describe. (A module
  # source such as git::https://...//terraform/aws/modules/shadow fetches the whole repository, so
  # this path resolves there too.)
  units_dir = "${path.module}/../../../../contrib/systemd"

  ec2_arn      = "arn:${local.partition}:ec2:${local.region}:${local.account}"
  volume_arns  = "${local.ec2_arn}:volume/*"
  snapshot_arn = "arn:${local.partition}:ec2:${local.region}::snapshot/*"

  metadata_options = {
    http_endpoint = "enabled"
    # IMDSv2 only.
    http_tokens = "required"
    # One hop: the token answer does not reach a container behind Docker's bridge, so apps cannot
    # borrow the node's role.
    http_put_response_hop_limit = 1
  }
}

# --- KMS: encrypts the bucket and the API token parameter ------------------------------------

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" is the key itself; this is AWS's default statement that lets IAM policies in the account grant use of the key.
  #checkov:skip=CKV_AWS_111:Same default key-policy statement; the roles below get only Decrypt/GenerateDataKey through S3 and SSM.
  #checkov:skip=CKV_AWS_356:Key policies can only name the key as "*".
  statement {
    sid       = "AccountAdministersThroughIam"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }
}

resource "aws_kms_key" "shadow" {
  description             = "Shadow ${var.name}: S3 volume snapshots and the API token"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "shadow" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.shadow.key_id
}

# --- S3: `s3` volume snapshots and the master's backups ---------------------------------------

resource "aws_s3_bucket" "volumes" {
  #checkov:skip=CKV_AWS_18:Server access logs need a second bucket and are rarely read; enable CloudTrail S3 data events on this bucket if you need an access trail.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles the storage cost Shadow exists to cut; versioning with noncurrent retention guards against overwrites. Replicate outside this module if you need regional redundancy.
  #checkov:skip=CKV2_AWS_62:Nothing consumes events of this bucket; Shadow's nodes read and write it directly.
  bucket        = var.bucket_name
  bucket_prefix = var.bucket_name == null ? "${var.name}-volumes-" : null
  force_destroy = var.force_destroy_bucket
  tags          = local.tags
}

resource "aws_s3_bucket_public_access_block" "volumes" {
  bucket                  = aws_s3_bucket.volumes.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "volumes" {
  bucket = aws_s3_bucket.volumes.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "volumes" {
  bucket = aws_s3_bucket.volumes.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "volumes" {
  bucket = aws_s3_bucket.volumes.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.shadow.arn
    }
    # Fewer KMS calls (and charges) for the many snapshot objects.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "volumes" {
  bucket = aws_s3_bucket.volumes.id

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "expire-old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  depends_on = [aws_s3_bucket_versioning.volumes]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyPlainHttp"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.volumes.arn,
      "${aws_s3_bucket.volumes.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "volumes" {
  bucket     = aws_s3_bucket.volumes.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.volumes]
}

# --- The API token: generated here, kept in SSM, read by every instance at (re)start ----------

resource "random_password" "api_token" {
  length  = 48
  special = false
}

resource "aws_ssm_parameter" "api_token" {
  name        = local.token_parameter
  description = "Shadow ${var.name}: the master's API token (SHADOW_API_TOKEN)"
  type        = "SecureString"
  key_id      = aws_kms_key.shadow.arn
  value       = random_password.api_token.result
  tags        = local.tags
}

# --- Security groups --------------------------------------------------------------------------

resource "aws_security_group" "edge" {
  name        = "${var.name}-edge"
  description = "Shadow edge: HTTP(S) from anywhere"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-edge" })
}

resource "aws_security_group" "master" {
  name        = "${var.name}-master"
  description = "Shadow master: API from the edge and the nodes only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-master" })
}

resource "aws_security_group" "node" {
  name        = "${var.name}-node"
  description = "Shadow nodes: proxy port from the edge only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-node" })
}

locals {
  security_groups = {
    edge   = aws_security_group.edge.id
    master = aws_security_group.master.id
    node   = aws_security_group.node.id
  }
  public_http = {
    http-ipv4  = { port = 80, ipv4 = "0.0.0.0/0", ipv6 = null }
    http-ipv6  = { port = 80, ipv4 = null, ipv6 = "::/0" }
    https-ipv4 = { port = 443, ipv4 = "0.0.0.0/0", ipv6 = null }
    https-ipv6 = { port = 443, ipv4 = null, ipv6 = "::/0" }
  }
  # Every instance reaches out on 80/443 only: Debian mirrors, the binaries, container registries,
  # and the AWS APIs (S3, SSM, EC2). DNS and NTP go to the VPC's link-local services, which
  # security groups do not filter.
  egress_web = {
    for pair in setproduct(keys(local.security_groups), keys(local.public_http)) :
    "${pair[0]}-${pair[1]}" => merge(local.public_http[pair[1]], { sg = pair[0] })
  }
  ssh = {
    for pair in setproduct(keys(local.security_groups), var.ssh_cidr_blocks) :
    "${pair[0]}-${pair[1]}" => { sg = pair[0], cidr = pair[1] }
  }
}

resource "aws_vpc_security_group_ingress_rule" "edge_public" {
  #checkov:skip=CKV_AWS_260:The edge is the public entry of every app: HTTP on 80 (and HTTPS on 443) from anywhere is its job.
  for_each          = local.public_http
  security_group_id = aws_security_group.edge.id
  description       = "Public ${each.value.port == 80 ? "HTTP" : "HTTPS"} to the edge"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.ipv4
  cidr_ipv6         = each.value.ipv6
}

resource "aws_vpc_security_group_ingress_rule" "master_from_edge" {
  security_group_id            = aws_security_group.master.id
  description                  = "Master API from the edge"
  ip_protocol                  = "tcp"
  from_port                    = 7070
  to_port                      = 7070
  referenced_security_group_id = aws_security_group.edge.id
}

resource "aws_vpc_security_group_ingress_rule" "master_from_nodes" {
  security_group_id            = aws_security_group.master.id
  description                  = "Master API from the nodes"
  ip_protocol                  = "tcp"
  from_port                    = 7070
  to_port                      = 7070
  referenced_security_group_id = aws_security_group.node.id
}

resource "aws_vpc_security_group_ingress_rule" "node_from_edge" {
  security_group_id            = aws_security_group.node.id
  description                  = "Node proxy from the edge"
  ip_protocol                  = "tcp"
  from_port                    = 7071
  to_port                      = 7071
  referenced_security_group_id = aws_security_group.edge.id
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each          = local.ssh
  security_group_id = local.security_groups[each.value.sg]
  description       = "SSH from an allowed network"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_egress_rule" "web" {
  for_each          = local.egress_web
  security_group_id = local.security_groups[each.value.sg]
  description       = "Out to ${each.value.port == 80 ? "HTTP" : "HTTPS"}: packages, binaries, images, AWS APIs"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.ipv4
  cidr_ipv6         = each.value.ipv6
}

resource "aws_vpc_security_group_egress_rule" "edge_to_master" {
  security_group_id            = aws_security_group.edge.id
  description                  = "Edge to the master API"
  ip_protocol                  = "tcp"
  from_port                    = 7070
  to_port                      = 7070
  referenced_security_group_id = aws_security_group.master.id
}

resource "aws_vpc_security_group_egress_rule" "edge_to_nodes" {
  security_group_id            = aws_security_group.edge.id
  description                  = "Edge to the node proxies"
  ip_protocol                  = "tcp"
  from_port                    = 7071
  to_port                      = 7071
  referenced_security_group_id = aws_security_group.node.id
}

resource "aws_vpc_security_group_egress_rule" "node_to_master" {
  security_group_id            = aws_security_group.node.id
  description                  = "Node to the master API"
  ip_protocol                  = "tcp"
  from_port                    = 7070
  to_port                      = 7070
  referenced_security_group_id = aws_security_group.master.id
}

# --- IAM: one role per program, each allowed only what that program does ----------------------

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "master" {
  name               = "${var.name}-master"
  description        = "Shadow ${var.name} master: read the API token, write state backups"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

resource "aws_iam_role" "edge" {
  name               = "${var.name}-edge"
  description        = "Shadow ${var.name} edge: read the API token, replace dead nodes"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-node"
  description        = "Shadow ${var.name} node: read the API token, s3 and ebs volumes"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

resource "aws_iam_instance_profile" "master" {
  name = "${var.name}-master"
  role = aws_iam_role.master.name
  tags = local.tags
}

resource "aws_iam_instance_profile" "edge" {
  name = "${var.name}-edge"
  role = aws_iam_role.edge.name
  tags = local.tags
}

resource "aws_iam_instance_profile" "node" {
  name = "${var.name}-node"
  role = aws_iam_role.node.name
  tags = local.tags
}

# What all three do at every (re)start: read the token.
data "aws_iam_policy_document" "read_token" {
  statement {
    sid       = "ReadApiToken"
    actions   = ["ssm:GetParameter"]
    resources = [aws_ssm_parameter.api_token.arn]
  }
  statement {
    sid       = "DecryptApiToken"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.shadow.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${local.region}.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "master" {
  source_policy_documents = [data.aws_iam_policy_document.read_token.json]

  # The database URL (with its password), read at every start like the token.
  dynamic "statement" {
    for_each = var.create_database ? [1] : []
    content {
      sid       = "ReadDatabaseUrl"
      actions   = ["ssm:GetParameter"]
      resources = [aws_ssm_parameter.database_url[0].arn]
    }
  }

  # The hourly backup of the state database (shadow-master-backup.timer), and nothing else.
  statement {
    sid       = "WriteStateBackups"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.volumes.arn}/master-backups/*"]
  }
  statement {
    sid       = "EncryptStateBackups"
    actions   = ["kms:GenerateDataKey"]
    resources = [aws_kms_key.shadow.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "node" {
  source_policy_documents = [data.aws_iam_policy_document.read_token.json]

  # `s3` volumes: this bucket only.
  statement {
    sid       = "ListVolumeBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.volumes.arn]
  }
  statement {
    sid = "ReadWriteSnapshots"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.volumes.arn}/*"]
  }
  statement {
    sid       = "EncryptSnapshots"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.shadow.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }

  # `ebs` volumes: only volumes and snapshots tagged shadow-volume=<name>, attached only to this
  # cluster's nodes.
  statement {
    sid = "DescribeVolumes"
    # Describe calls have no resource-level permissions.
    actions = [
      "ec2:DescribeVolumes",
      "ec2:DescribeVolumeStatus",
      "ec2:DescribeSnapshots",
      "ec2:DescribeInstances",
      "ec2:DescribeAvailabilityZones",
      "ec2:DescribeTags",
    ]
    resources = ["*"]
  }
  statement {
    sid       = "CreateTaggedVolumes"
    actions   = ["ec2:CreateVolume"]
    resources = [local.volume_arns]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/${local.volume_tag}"
      values   = [var.name]
    }
  }
  statement {
    sid       = "CreateVolumesFromOwnSnapshots"
    actions   = ["ec2:CreateVolume"]
    resources = [local.snapshot_arn]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${local.volume_tag}"
      values   = [var.name]
    }
  }
  statement {
    sid       = "SnapshotOwnVolumes"
    actions   = ["ec2:CreateSnapshot"]
    resources = [local.volume_arns]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${local.volume_tag}"
      values   = [var.name]
    }
  }
  statement {
    sid       = "CreateTaggedSnapshots"
    actions   = ["ec2:CreateSnapshot"]
    resources = [local.snapshot_arn]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/${local.volume_tag}"
      values   = [var.name]
    }
  }
  statement {
    sid       = "TagOnlyWhileCreating"
    actions   = ["ec2:CreateTags"]
    resources = [local.volume_arns, local.snapshot_arn]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["CreateVolume", "CreateSnapshot"]
    }
  }
  statement {
    sid       = "AttachOwnVolumes"
    actions   = ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:DeleteVolume"]
    resources = [local.volume_arns]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${local.volume_tag}"
      values   = [var.name]
    }
  }
  statement {
    sid       = "AttachToNodesOnly"
    actions   = ["ec2:AttachVolume", "ec2:DetachVolume"]
    resources = ["${local.ec2_arn}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${local.node_tag}"
      values   = [var.name]
    }
  }
  statement {
    sid       = "DeleteOwnSnapshots"
    actions   = ["ec2:DeleteSnapshot"]
    resources = [local.snapshot_arn]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${local.volume_tag}"
      values   = [var.name]
    }
  }
}

data "aws_iam_policy_document" "edge" {
  source_policy_documents = [data.aws_iam_policy_document.read_token.json]

  # Replacing a dead node: launch from the node template, with nothing overridden...
  statement {
    sid     = "LaunchNodesFromTemplateOnly"
    actions = ["ec2:RunInstances"]
    # Every resource RunInstances touches (instance, volume, network interface, subnet, security
    # group, key pair, the template itself, and the image); the conditions pin them all to what
    # the node launch template says.
    resources = [
      "${local.ec2_arn}:*",
      "arn:${local.partition}:ec2:${local.region}::image/*",
    ]
    condition {
      test     = "ArnEquals"
      variable = "ec2:LaunchTemplate"
      values   = [aws_launch_template.node.arn]
    }
    condition {
      test     = "Bool"
      variable = "ec2:IsLaunchTemplateResource"
      values   = ["true"]
    }
  }
  statement {
    sid       = "PassNodeRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.node.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ec2.amazonaws.com"]
    }
  }
  # ...tagging only what that launch creates (the template's tag specifications)...
  statement {
    sid     = "TagOnlyAtLaunch"
    actions = ["ec2:CreateTags"]
    resources = [
      "${local.ec2_arn}:instance/*",
      "${local.ec2_arn}:volume/*",
      "${local.ec2_arn}:network-interface/*",
    ]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances"]
    }
  }
  # ...and terminating only this cluster's nodes.
  statement {
    sid       = "TerminateNodesOnly"
    actions   = ["ec2:TerminateInstances"]
    resources = ["${local.ec2_arn}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${local.node_tag}"
      values   = [var.name]
    }
  }
  statement {
    sid = "DescribeNodes"
    # Describe calls have no resource-level permissions.
    actions = [
      "ec2:DescribeInstances",
      "ec2:DescribeInstanceStatus",
      "ec2:DescribeLaunchTemplates",
      "ec2:DescribeLaunchTemplateVersions",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "master" {
  name   = "shadow-master"
  role   = aws_iam_role.master.id
  policy = data.aws_iam_policy_document.master.json
}

resource "aws_iam_role_policy" "node" {
  name   = "shadow-node"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.node.json
}

resource "aws_iam_role_policy" "edge" {
  name   = "shadow-edge"
  role   = aws_iam_role.edge.id
  policy = data.aws_iam_policy_document.edge.json
}

# --- Boot configuration (cloud-init) ----------------------------------------------------------

locals {
  env_lines = {
    master = merge({
      SHADOW_MASTER_LISTEN = "0.0.0.0:7070"
      SHADOW_DATA_DIR      = "/var/lib/shadow/master"
      # With create_database, SHADOW_DATABASE_URL comes from SSM at every start (shadow-fetch-token).
    }, var.master_env)
    nodeproxy = merge({
      SHADOW_MASTER_URL  = local.master_url
      SHADOW_NODE_LISTEN = "0.0.0.0:7071"
      SHADOW_DATA_DIR    = "/var/lib/shadow/node"
      SHADOW_S3_BUCKET   = aws_s3_bucket.volumes.bucket
      SHADOW_S3_REGION   = local.region
    }, var.nodeproxy_env)
    edgeproxy = merge({
      SHADOW_EDGE_LISTEN = "0.0.0.0:80"
      SHADOW_MASTER_URL  = local.master_url
    }, var.edgeproxy_env)
  }

  # TODO(edge proxy): its other options go in env_lines.edgeproxy once it defines them: the AWS
  # node provider (region local.region, launch template aws_launch_template.node.id, node tag
  # local.node_tag=var.name), health checks, TLS for var.domain.

  fetch_token = {
    for program in ["master", "nodeproxy", "edgeproxy"] : program => templatefile("${path.module}/templates/fetch-token.sh.tftpl", {
      region             = local.region
      parameter          = aws_ssm_parameter.api_token.name
      database_parameter = program == "master" && var.create_database ? local.database_parameter : ""
      database_ca_file   = local.database_ca_file
    })
  }

  token_dropin = <<-EOT
    # Installed by Terraform: every start reads the current API token from SSM Parameter Store.
    [Service]
    ExecStartPre=+/usr/local/sbin/shadow-fetch-token
    EnvironmentFile=-/etc/shadowd/token.env
  EOT

  block_metadata_unit = file("${path.module}/templates/shadow-block-metadata.service")

  master_backup = templatefile("${path.module}/templates/master-backup.sh.tftpl", {
    region = local.region
    bucket = aws_s3_bucket.volumes.bucket
  })

  user_data = {
    for program in ["master", "nodeproxy", "edgeproxy"] : program => templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
      program = program
      packages = concat(
        ["awscli", "ca-certificates", "curl"],
        program == "nodeproxy" ? ["docker.io", "iptables"] : [],
        program == "master" && !var.create_database ? ["sqlite3"] : [],
      )
      files = concat(
        [
          {
            path = "/usr/local/sbin/shadow-bootstrap"
            mode = "0755"
            content = templatefile("${path.module}/templates/bootstrap.sh.tftpl", {
              program       = program
              binary_url    = { master = var.master_binary_url, nodeproxy = var.nodeproxy_binary_url, edgeproxy = var.edgeproxy_binary_url }[program]
              binary_sha256 = lookup(var.binary_sha256, program, "")
              deb_url       = lookup(var.deb_urls, program, "")
            })
          },
          { path = "/usr/local/sbin/shadow-fetch-token", mode = "0755", content = local.fetch_token[program] },
          {
            path    = "/etc/shadowd/${program}.env"
            mode    = "0600"
            content = join("", ["# Written by Terraform at first boot; see docs/operations.md.\n"], [for k, v in local.env_lines[program] : "${k}=${v}\n"])
          },
          { path = "/etc/systemd/system/shadow-${program}.service.d/10-token.conf", mode = "0644", content = local.token_dropin },
        ],
        # With a .deb the package brings the unit; else the one from contrib/systemd.
        lookup(var.deb_urls, program, "") == "" ? [
          { path = "/etc/systemd/system/shadow-${program}.service", mode = "0644", content = file("${local.units_dir}/shadow-${program}.service") },
        ] : [],
        program == "nodeproxy" ? [
          { path = "/etc/systemd/system/shadow-block-metadata.service", mode = "0644", content = local.block_metadata_unit },
        ] : [],
        # With RDS, RDS keeps the backups (var.database_backup_retention_days).
        program == "master" && !var.create_database ? [
          { path = "/usr/local/sbin/shadow-master-backup", mode = "0755", content = local.master_backup },
          { path = "/etc/systemd/system/shadow-master-backup.service", mode = "0644", content = file("${path.module}/templates/shadow-master-backup.service") },
          { path = "/etc/systemd/system/shadow-master-backup.timer", mode = "0644", content = file("${path.module}/templates/shadow-master-backup.timer") },
        ] : [],
      )
    })
  }
}

# --- Instances --------------------------------------------------------------------------------

resource "aws_instance" "master" {
  #checkov:skip=CKV_AWS_126:Detailed (1-minute) monitoring costs extra per instance; var.detailed_monitoring turns it on.
  count                  = var.master_count
  ami                    = local.ami_id
  instance_type          = var.master_instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.master.id]
  iam_instance_profile   = aws_iam_instance_profile.master.name
  key_name               = var.ssh_key_name
  ebs_optimized          = true
  monitoring             = var.detailed_monitoring
  # gzip: cloud-init unpacks it, and it keeps the user data far below EC2's 16 KB.
  user_data_base64 = base64gzip(local.user_data["master"])

  metadata_options {
    http_endpoint               = local.metadata_options.http_endpoint
    http_tokens                 = local.metadata_options.http_tokens
    http_put_response_hop_limit = local.metadata_options.http_put_response_hop_limit
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.master_root_volume_gb
    encrypted   = true
    tags        = merge(local.tags, { Name = "${var.name}-master-root" })
  }

  tags = merge(local.tags, { Name = var.master_count > 1 ? "${var.name}-master-${count.index}" : "${var.name}-master", "shadow-role" = "master" })

  lifecycle {
    # Without create_database the master's state is on this instance: a newer Debian image or
    # changed boot script must not replace it. Replace it deliberately (after a backup), see
    # docs/operations.md.
    ignore_changes = [ami, user_data, user_data_base64]
    precondition {
      condition     = var.master_count == 1 || var.create_database
      error_message = "master_count > 1 needs create_database = true: several masters share one PostgreSQL database."
    }
  }
}

resource "aws_instance" "edge" {
  #checkov:skip=CKV_AWS_126:Detailed (1-minute) monitoring costs extra per instance; var.detailed_monitoring turns it on.
  ami                    = local.ami_id
  instance_type          = var.edge_instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.edge.id]
  iam_instance_profile   = aws_iam_instance_profile.edge.name
  key_name               = var.ssh_key_name
  ebs_optimized          = true
  monitoring             = var.detailed_monitoring
  user_data_base64       = base64gzip(local.user_data["edgeproxy"])

  metadata_options {
    http_endpoint               = local.metadata_options.http_endpoint
    http_tokens                 = local.metadata_options.http_tokens
    http_put_response_hop_limit = local.metadata_options.http_put_response_hop_limit
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.edge_root_volume_gb
    encrypted   = true
    tags        = merge(local.tags, { Name = "${var.name}-edge-root" })
  }

  tags = merge(local.tags, { Name = "${var.name}-edge", "shadow-role" = "edge" })

  lifecycle {
    ignore_changes = [ami, user_data, user_data_base64]
  }
}

# A fixed public address for the edge, so DNS survives replacing the instance.
resource "aws_eip" "edge" {
  domain   = "vpc"
  instance = aws_instance.edge.id
  tags     = merge(local.tags, { Name = "${var.name}-edge" })
}

resource "aws_launch_template" "node" {
  name_prefix            = "${var.name}-node-"
  description            = "Shadow ${var.name} node; the edge launches replacements from it"
  image_id               = local.ami_id
  instance_type          = var.node_instance_type
  key_name               = var.ssh_key_name
  ebs_optimized          = true
  update_default_version = true
  user_data              = base64gzip(local.user_data["nodeproxy"])

  iam_instance_profile {
    arn = aws_iam_instance_profile.node.arn
  }

  network_interfaces {
    device_index          = 0
    subnet_id             = var.subnet_id
    security_groups       = [aws_security_group.node.id]
    delete_on_termination = true
  }

  metadata_options {
    http_endpoint               = local.metadata_options.http_endpoint
    http_tokens                 = local.metadata_options.http_tokens
    http_put_response_hop_limit = local.metadata_options.http_put_response_hop_limit
  }

  monitoring {
    enabled = var.detailed_monitoring
  }

  block_device_mappings {
    device_name = data.aws_ami.selected.root_device_name
    ebs {
      volume_type           = "gp3"
      volume_size           = var.node_root_volume_gb
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-node", "shadow-role" = "node", (local.node_tag) = var.name })
  }

  # The root volume is NOT tagged shadow-volume: the nodes may not detach or delete it.
  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.name}-node-root" })
  }

  tags = local.tags
}

resource "aws_instance" "node" {
  #checkov:skip=CKV_AWS_79:IMDSv2 is required by the launch template's metadata_options, which checkov does not follow.
  #checkov:skip=CKV_AWS_8:The root volume is encrypted by the launch template's block_device_mappings.
  #checkov:skip=CKV_AWS_135:EBS optimisation is set in the launch template.
  #checkov:skip=CKV_AWS_126:Detailed monitoring is set in the launch template (var.detailed_monitoring).
  #checkov:skip=CKV2_AWS_41:The node instance profile is set in the launch template.
  count = var.node_count

  launch_template {
    id      = aws_launch_template.node.id
    version = aws_launch_template.node.latest_version
  }

  tags = merge(local.tags, { Name = "${var.name}-node-${count.index}", "shadow-role" = "node", (local.node_tag) = var.name })

  lifecycle {
    # A new template version (newer AMI, changed settings) applies to nodes launched after it; roll
    # the existing ones one at a time with `terraform apply -replace=...` (docs/operations.md).
    ignore_changes = [launch_template]
  }
}

# --- DNS (optional) ---------------------------------------------------------------------------

resource "aws_route53_record" "apps" {
  for_each = var.route53_zone_id != null && var.domain != "" ? toset([var.domain, "*.${var.domain}"]) : toset([])
  zone_id  = var.route53_zone_id
  name     = each.value
  type     = "A"
  ttl      = 300
  records  = [aws_eip.edge.public_ip]
}
