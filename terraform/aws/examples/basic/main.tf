# The smallest Shadow cluster on AWS, in the region's default VPC:
#
#   cp terraform.tfvars.example terraform.tfvars   # then edit it
#   terraform init && terraform apply
#
# The default VPC's subnets give instances public IPs, which they use to reach Debian's mirrors,
# the binaries, container registries and the AWS APIs; security groups admit nothing from outside
# but HTTP(S) to the edge (and SSH from var.ssh_cidr_blocks). In a VPC with private subnets, give
# them a NAT gateway or VPC endpoints (S3, SSM, EC2) and pass that subnet instead.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project = "shadow"
    }
  }
}

data "aws_vpc" "default" {
  default = true
}

data "aws_subnets" "default" {
  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default.id]
  }
  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

module "shadow" {
  source = "../../modules/shadow"

  name   = var.name
  vpc_id = data.aws_vpc.default.id
  # One subnet (one availability zone) for all: EBS volumes attach within their zone only.
  subnet_id = sort(data.aws_subnets.default.ids)[0]

  master_binary_url    = "${var.release_base_url}/shadow-master"
  nodeproxy_binary_url = "${var.release_base_url}/shadow-nodeproxy"
  edgeproxy_binary_url = "${var.release_base_url}/shadow-edgeproxy"
  binary_sha256        = var.binary_sha256

  ami_id               = var.ami_id
  master_instance_type = var.master_instance_type
  edge_instance_type   = var.edge_instance_type
  node_instance_type   = var.node_instance_type
  node_count           = var.node_count
  ssh_key_name         = var.ssh_key_name
  ssh_cidr_blocks      = var.ssh_cidr_blocks
  domain               = var.domain
  route53_zone_id      = var.route53_zone_id
}
