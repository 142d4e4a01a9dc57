# Several masters: a managed PostgreSQL cluster for their shared state (var.create_database) in
# the cluster's VPC, reachable from the master droplets only. The edge and the nodes are given
# every master (SHADOW_MASTER_URL=http://m1:7070,http://m2:7070) and move between them on their
# own, so no load balancer is needed. docs/operations.md#several-masters.

locals {
  master_url = join(",", [for m in digitalocean_droplet.master : "http://${m.ipv4_address_private}:7070"])
  # Where the masters keep the cluster's certificate authority, to verify the database.
  database_ca_file = "/etc/shadowd/database-ca.pem"
}

resource "digitalocean_database_cluster" "state" {
  count                = var.create_database ? 1 : 0
  name                 = "${var.name}-state"
  engine               = "pg"
  version              = "16"
  size                 = var.database_size
  region               = var.region
  node_count           = var.database_node_count
  private_network_uuid = digitalocean_vpc.shadow.id
  tags                 = [local.tag.master]
}

# Only the master droplets may connect (by tag, so a replaced master is covered at once).
resource "digitalocean_database_firewall" "state" {
  count      = var.create_database ? 1 : 0
  cluster_id = digitalocean_database_cluster.state[0].id

  rule {
    type  = "tag"
    value = local.tag.master
  }
}

data "digitalocean_database_ca" "state" {
  count      = var.create_database ? 1 : 0
  cluster_id = digitalocean_database_cluster.state[0].id
}
