# The smallest Shadow cluster on DigitalOcean:
#
#   export DIGITALOCEAN_TOKEN=...                 # API token for Terraform
#   export SPACES_ACCESS_KEY_ID=... SPACES_SECRET_ACCESS_KEY=...   # to create the bucket
#   cp terraform.tfvars.example terraform.tfvars   # then edit it
#   terraform init && terraform apply

provider "digitalocean" {}

module "shadow" {
  source = "../../modules/shadow"

  name   = var.name
  region = var.region

  master_binary_url    = "${var.release_base_url}/shadow-master"
  nodeproxy_binary_url = "${var.release_base_url}/shadow-nodeproxy"
  edgeproxy_binary_url = "${var.release_base_url}/shadow-edgeproxy"
  binary_sha256        = var.binary_sha256

  ssh_keys             = var.ssh_keys
  ssh_source_addresses = var.ssh_source_addresses
  node_count           = var.node_count
  node_do_token        = var.node_do_token
  domain               = var.domain
  dns_zone             = var.dns_zone
}
