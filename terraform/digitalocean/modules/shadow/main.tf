# A Shadow cluster on DigitalOcean: var.master_count masters (several share managed PostgreSQL, database.tf), one edge and var.node_count nodes in a VPC, a
# Spaces bucket for `s3` volumes with a key limited to it, firewalls, and a project holding it
# all. Block volumes (`do`) are left to Shadow's nodes. See docs/operations.md.

locals {
  spaces_region   = coalesce(var.spaces_region, var.region)
  spaces_endpoint = "https://${local.spaces_region}.digitaloceanspaces.com"

  # Droplet tags: firewalls apply by tag, so a node the edge starts as a replacement (tagged
  # <name>-node) is covered at once.
  tag = {
    master = digitalocean_tag.master.name
    edge   = digitalocean_tag.edge.name
    node   = digitalocean_tag.node.name
  }

  # The systemd units are contrib/systemd's (a git module source fetches the whole repository,
  # so this path resolves there too).
  units_dir = "${path.module}/../../../../contrib/systemd"
}

resource "digitalocean_tag" "master" {
  name = "${var.name}-master"
}

resource "digitalocean_tag" "edge" {
  name = "${var.name}-edge"
}

resource "digitalocean_tag" "node" {
  name = "${var.name}-node"
}

resource "digitalocean_vpc" "shadow" {
  name        = var.name
  region      = var.region
  ip_range    = var.vpc_ip_range
  description = "Shadow ${var.name}: master, edge and nodes"
}

# --- Spaces: `s3` volume snapshots ------------------------------------------------------------

resource "random_id" "bucket" {
  byte_length = 4
}

resource "digitalocean_spaces_bucket" "volumes" {
  name          = coalesce(var.bucket_name, "${var.name}-volumes-${random_id.bucket.hex}")
  region        = local.spaces_region
  acl           = "private"
  force_destroy = var.force_destroy_bucket

  versioning {
    enabled = true
  }

  lifecycle_rule {
    id                                     = "abort-incomplete-uploads"
    enabled                                = true
    abort_incomplete_multipart_upload_days = 7
  }

  lifecycle_rule {
    id      = "expire-old-versions"
    enabled = true
    noncurrent_version_expiration {
      days = var.noncurrent_version_retention_days
    }
  }
}

# The nodes' key: read and write on this bucket only.
resource "digitalocean_spaces_key" "nodes" {
  name = "${var.name}-nodes"
  grant {
    bucket     = digitalocean_spaces_bucket.volumes.name
    permission = "readwrite"
  }
}

# --- The API token ----------------------------------------------------------------------------

# DigitalOcean has no secret store the droplets could read at boot, so the token travels in their
# user data (root-only on the droplet; the nodes block containers from the metadata service). It
# is also in the Terraform state: keep that private.
resource "random_password" "api_token" {
  length  = 48
  special = false
}

# --- Boot configuration (cloud-init) ----------------------------------------------------------

locals {
  env_lines = {
    master = merge({
      SHADOW_MASTER_LISTEN = "0.0.0.0:7070"
      SHADOW_DATA_DIR      = "/var/lib/shadow/master"
      SHADOW_API_TOKEN     = random_password.api_token.result
      }, var.create_database ? {
      # The private URI carries sslmode=require; sslrootcert makes the master verify the server.
      SHADOW_DATABASE_URL = "${digitalocean_database_cluster.state[0].private_uri}&sslrootcert=${local.database_ca_file}"
    } : {}, var.master_env)
    nodeproxy = merge({
      SHADOW_MASTER_URL  = local.master_url
      SHADOW_API_TOKEN   = random_password.api_token.result
      SHADOW_NODE_LISTEN = "0.0.0.0:7071"
      SHADOW_DATA_DIR    = "/var/lib/shadow/node"
      SHADOW_S3_ENDPOINT = local.spaces_endpoint
      SHADOW_S3_BUCKET   = digitalocean_spaces_bucket.volumes.name
      # Spaces ignores the signing region; S3 clients want one, and us-east-1 always works.
      SHADOW_S3_REGION     = "us-east-1"
      SHADOW_S3_ACCESS_KEY = digitalocean_spaces_key.nodes.access_key
      SHADOW_S3_SECRET_KEY = digitalocean_spaces_key.nodes.secret_key
      }, var.node_do_token == null ? {} : {
      # TODO(do volumes): the name of the `do` backend's token option once it exists.
      SHADOW_DO_TOKEN = var.node_do_token
    }, var.nodeproxy_env)
    edgeproxy = merge({
      SHADOW_EDGE_LISTEN = "0.0.0.0:80"
      SHADOW_MASTER_URL  = local.master_url
      SHADOW_API_TOKEN   = random_password.api_token.result
    }, var.edgeproxy_env)
  }

  # TODO(edge proxy): its other options go in env_lines.edgeproxy once it defines them: the
  # DigitalOcean node provider (its own API token, region var.region, size var.node_size, image
  # var.image, VPC digitalocean_vpc.shadow.id, tag local.tag.node, the node user data below),
  # health checks, TLS for var.domain.

  user_data = {
    for program in ["master", "nodeproxy", "edgeproxy"] : program => templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
      program = program
      packages = concat(
        ["ca-certificates", "curl"],
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
          {
            path    = "/etc/shadowd/${program}.env"
            mode    = "0600"
            content = join("", ["# Written by Terraform at first boot; see docs/operations.md.\n"], [for k, v in local.env_lines[program] : "${k}=${v}\n"])
          },
        ],
        # With a .deb the package brings the unit; else the one from contrib/systemd.
        lookup(var.deb_urls, program, "") == "" ? [
          { path = "/etc/systemd/system/shadow-${program}.service", mode = "0644", content = file("${local.units_dir}/shadow-${program}.service") },
        ] : [],
        program == "nodeproxy" ? [
          { path = "/etc/systemd/system/shadow-block-metadata.service", mode = "0644", content = file("${path.module}/templates/shadow-block-metadata.service") },
        ] : [],
        program == "master" && var.create_database ? [
          { path = local.database_ca_file, mode = "0644", content = data.digitalocean_database_ca.state[0].certificate },
        ] : [],
      )
    })
  }
}

# --- Droplets ---------------------------------------------------------------------------------

resource "digitalocean_droplet" "master" {
  #checkov:skip=CKV_DIO_2:ssh_keys is var.ssh_keys, a required variable whose validation demands at least one key; checkov cannot resolve a variable without a default.
  count      = var.master_count
  name       = var.master_count > 1 ? "${var.name}-master-${count.index}" : "${var.name}-master"
  region     = var.region
  size       = var.master_size
  image      = var.image
  vpc_uuid   = digitalocean_vpc.shadow.id
  ssh_keys   = var.ssh_keys
  tags       = [local.tag.master]
  monitoring = true
  backups    = var.master_backups
  user_data  = local.user_data["master"]

  lifecycle {
    # Without create_database the master's state is on this droplet: a changed boot script (or
    # token) must not replace it. Replace it deliberately (after a backup), see docs/operations.md.
    ignore_changes = [user_data, image]
    precondition {
      condition     = var.master_count == 1 || var.create_database
      error_message = "master_count > 1 needs create_database = true: several masters share one PostgreSQL database."
    }
  }
}

resource "digitalocean_droplet" "edge" {
  #checkov:skip=CKV_DIO_2:ssh_keys is var.ssh_keys, a required variable whose validation demands at least one key; checkov cannot resolve a variable without a default.
  name       = "${var.name}-edge"
  region     = var.region
  size       = var.edge_size
  image      = var.image
  vpc_uuid   = digitalocean_vpc.shadow.id
  ssh_keys   = var.ssh_keys
  tags       = [local.tag.edge]
  monitoring = true
  user_data  = local.user_data["edgeproxy"]

  lifecycle {
    ignore_changes = [user_data, image]
  }
}

# A fixed public address for the edge, so DNS survives replacing the droplet.
resource "digitalocean_reserved_ip" "edge" {
  region     = var.region
  droplet_id = digitalocean_droplet.edge.id
}

resource "digitalocean_droplet" "node" {
  #checkov:skip=CKV_DIO_2:ssh_keys is var.ssh_keys, a required variable whose validation demands at least one key; checkov cannot resolve a variable without a default.
  count      = var.node_count
  name       = "${var.name}-node-${count.index}"
  region     = var.region
  size       = var.node_size
  image      = var.image
  vpc_uuid   = digitalocean_vpc.shadow.id
  ssh_keys   = var.ssh_keys
  tags       = [local.tag.node]
  monitoring = true
  user_data  = local.user_data["nodeproxy"]

  lifecycle {
    # A changed boot script applies to nodes created after it; roll the existing ones one at a
    # time with `terraform apply -replace=...` (docs/operations.md).
    ignore_changes = [user_data, image]
  }
}

# --- Firewalls: the same rules as on AWS -------------------------------------------------------

locals {
  # What every droplet may reach: packages, binaries, container registries and Spaces (80/443),
  # DNS and NTP (DigitalOcean's resolvers and time servers are outside the VPC), and ICMP.
  outbound_common = [
    { protocol = "tcp", port_range = "80" },
    { protocol = "tcp", port_range = "443" },
    { protocol = "tcp", port_range = "53" },
    { protocol = "udp", port_range = "53" },
    { protocol = "udp", port_range = "123" },
    { protocol = "icmp", port_range = null },
  ]
  world = ["0.0.0.0/0", "::/0"]
}

resource "digitalocean_firewall" "edge" {
  #checkov:skip=CKV_DIO_4:The edge is the public entry of every app: HTTP(S) on 80 and 443 from anywhere is its job.
  name = "${var.name}-edge"
  tags = [local.tag.edge]

  inbound_rule {
    protocol         = "tcp"
    port_range       = "80"
    source_addresses = local.world
  }
  inbound_rule {
    protocol         = "tcp"
    port_range       = "443"
    source_addresses = local.world
  }
  dynamic "inbound_rule" {
    for_each = length(var.ssh_source_addresses) > 0 ? [1] : []
    content {
      protocol         = "tcp"
      port_range       = "22"
      source_addresses = var.ssh_source_addresses
    }
  }

  outbound_rule {
    protocol         = "tcp"
    port_range       = "7070"
    destination_tags = [local.tag.master]
  }
  outbound_rule {
    protocol         = "tcp"
    port_range       = "7071"
    destination_tags = [local.tag.node]
  }
  dynamic "outbound_rule" {
    for_each = local.outbound_common
    content {
      protocol              = outbound_rule.value.protocol
      port_range            = outbound_rule.value.port_range
      destination_addresses = local.world
    }
  }
}

resource "digitalocean_firewall" "master" {
  name = "${var.name}-master"
  tags = [local.tag.master]

  inbound_rule {
    protocol    = "tcp"
    port_range  = "7070"
    source_tags = [local.tag.edge, local.tag.node]
  }
  dynamic "inbound_rule" {
    for_each = length(var.ssh_source_addresses) > 0 ? [1] : []
    content {
      protocol         = "tcp"
      port_range       = "22"
      source_addresses = var.ssh_source_addresses
    }
  }

  dynamic "outbound_rule" {
    for_each = local.outbound_common
    content {
      protocol              = outbound_rule.value.protocol
      port_range            = outbound_rule.value.port_range
      destination_addresses = local.world
    }
  }
  # The managed database's private port, inside the VPC.
  dynamic "outbound_rule" {
    for_each = var.create_database ? [1] : []
    content {
      protocol              = "tcp"
      port_range            = "25060"
      destination_addresses = [digitalocean_vpc.shadow.ip_range]
    }
  }
}

resource "digitalocean_firewall" "node" {
  name = "${var.name}-node"
  tags = [local.tag.node]

  inbound_rule {
    protocol    = "tcp"
    port_range  = "7071"
    source_tags = [local.tag.edge]
  }
  dynamic "inbound_rule" {
    for_each = length(var.ssh_source_addresses) > 0 ? [1] : []
    content {
      protocol         = "tcp"
      port_range       = "22"
      source_addresses = var.ssh_source_addresses
    }
  }

  outbound_rule {
    protocol         = "tcp"
    port_range       = "7070"
    destination_tags = [local.tag.master]
  }
  dynamic "outbound_rule" {
    for_each = local.outbound_common
    content {
      protocol              = outbound_rule.value.protocol
      port_range            = outbound_rule.value.port_range
      destination_addresses = local.world
    }
  }
}

# --- Project and DNS --------------------------------------------------------------------------

resource "digitalocean_project" "shadow" {
  name        = var.name
  description = "Shadow: scale-to-zero apps (master, edge, nodes, volume bucket)"
  purpose     = "Web Application"
  environment = var.project_environment
  resources = concat(
    [
      digitalocean_droplet.edge.urn,
      digitalocean_reserved_ip.edge.urn,
      digitalocean_spaces_bucket.volumes.urn,
    ],
    digitalocean_droplet.master[*].urn,
    digitalocean_droplet.node[*].urn,
    digitalocean_database_cluster.state[*].urn,
  )
}

locals {
  # Records relative to var.dns_zone: var.domain itself and its wildcard.
  dns_name = var.dns_zone == null || var.domain == "" ? null : (
    var.domain == var.dns_zone ? "@" : trimsuffix(var.domain, ".${var.dns_zone}")
  )
  dns_records = local.dns_name == null ? [] : [local.dns_name, local.dns_name == "@" ? "*" : "*.${local.dns_name}"]
}

resource "digitalocean_record" "apps" {
  for_each = toset(local.dns_records)
  domain   = var.dns_zone
  type     = "A"
  name     = each.value
  value    = digitalocean_reserved_ip.edge.ip_address
  ttl      = 300
}
