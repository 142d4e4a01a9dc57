variable "name" {
  description = "Name of this Shadow cluster: prefixes every resource and its tags. Lower-case letters, digits and '-'."
  type        = string
  default     = "shadow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.name))
    error_message = "name must be 1 to 24 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "region" {
  description = "DigitalOcean region of the droplets and the VPC, e.g. ams3. Block volumes attach within their region only."
  type        = string
  default     = "ams3"
}

variable "spaces_region" {
  description = "Region of the Spaces bucket; null = var.region (which must then offer Spaces)."
  type        = string
  default     = null
}

variable "vpc_ip_range" {
  description = "Private range of the VPC the droplets share; null = DigitalOcean picks one."
  type        = string
  default     = null
}

variable "image" {
  description = "Droplet image. The bootstrap expects Debian 12 (apt, systemd, cloud-init)."
  type        = string
  default     = "debian-12-x64"
}

variable "master_size" {
  description = "Droplet size of the master."
  type        = string
  default     = "s-1vcpu-2gb"
}

variable "edge_size" {
  description = "Droplet size of the edge."
  type        = string
  default     = "s-1vcpu-1gb"
}

variable "node_size" {
  description = "Droplet size of the nodes (they run the apps' containers)."
  type        = string
  default     = "s-2vcpu-4gb"
}

variable "node_count" {
  description = "How many nodes Terraform creates (the edge replaces dead ones itself)."
  type        = number
  default     = 2

  validation {
    condition     = var.node_count >= 0 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number, 0 or more."
  }
}

variable "ssh_keys" {
  description = "IDs or fingerprints of the DigitalOcean SSH keys installed for root on every droplet."
  type        = list(string)

  validation {
    condition     = length(var.ssh_keys) > 0
    error_message = "Give at least one SSH key: without one, DigitalOcean mails a root password."
  }
}

variable "ssh_source_addresses" {
  description = "Networks allowed to SSH (port 22) to the droplets; empty = none."
  type        = list(string)
  default     = []
}

variable "domain" {
  description = "Parent domain of the apps, e.g. apps.example.com; with dns_zone, `domain` and `*.domain` point at the edge. Empty = no records."
  type        = string
  default     = ""
}

variable "dns_zone" {
  description = "A domain managed in DigitalOcean DNS that contains var.domain (e.g. example.com); null = manage DNS yourself."
  type        = string
  default     = null
}

variable "master_binary_url" {
  description = "HTTPS URL of the shadow-master binary (Linux, the droplets' architecture) the master downloads at first boot."
  type        = string
  default     = ""

  validation {
    condition     = var.master_binary_url == "" || startswith(var.master_binary_url, "https://")
    error_message = "master_binary_url must be an https:// URL (or empty, with deb_urls.master set)."
  }
}

variable "nodeproxy_binary_url" {
  description = "HTTPS URL of the shadow-nodeproxy binary (Linux, the droplets' architecture) every node downloads at first boot."
  type        = string
  default     = ""

  validation {
    condition     = var.nodeproxy_binary_url == "" || startswith(var.nodeproxy_binary_url, "https://")
    error_message = "nodeproxy_binary_url must be an https:// URL (or empty, with deb_urls.nodeproxy set)."
  }
}

variable "edgeproxy_binary_url" {
  description = "HTTPS URL of the shadow-edgeproxy binary (Linux, the droplets' architecture) the edge downloads at first boot."
  type        = string
  default     = ""

  validation {
    condition     = var.edgeproxy_binary_url == "" || startswith(var.edgeproxy_binary_url, "https://")
    error_message = "edgeproxy_binary_url must be an https:// URL (or empty, with deb_urls.edgeproxy set)."
  }
}

variable "deb_urls" {
  description = "HTTPS URLs of .deb packages (contrib/package.sh), keyed master, nodeproxy, edgeproxy: a program listed here is installed from its package (binary, unit, /usr/bin) instead of from its *_binary_url."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.deb_urls : contains(["master", "nodeproxy", "edgeproxy"], k) && startswith(v, "https://")])
    error_message = "deb_urls keys must be master, nodeproxy or edgeproxy, and values https:// URLs."
  }
}

variable "binary_sha256" {
  description = "Expected SHA-256 (hex) of the binaries (or of the .deb packages, for programs in deb_urls), keyed master, nodeproxy, edgeproxy; a missing key skips that check."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.binary_sha256 : contains(["master", "nodeproxy", "edgeproxy"], k) && can(regex("^[0-9a-f]{64}$", v))])
    error_message = "binary_sha256 keys must be master, nodeproxy or edgeproxy, and values 64 lower-case hex digits."
  }
}

variable "node_do_token" {
  description = "DigitalOcean API token the nodes use for `do` block volumes (create, attach, detach). Give it the narrowest scopes DigitalOcean offers (block storage, droplet read). null = no `do` volumes."
  type        = string
  default     = null
  sensitive   = true
}

variable "bucket_name" {
  description = "Name of the Spaces bucket for `s3` volume snapshots; null = a unique name from var.name."
  type        = string
  default     = null
}

variable "force_destroy_bucket" {
  description = "Let `terraform destroy` delete the bucket with the apps' data in it. Keep false outside experiments."
  type        = bool
  default     = false
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted object version is kept before it expires."
  type        = number
  default     = 30
}

variable "master_backups" {
  description = "DigitalOcean's weekly droplet backups for the master, whose disk holds the state (costs 20% of the droplet)."
  type        = bool
  default     = true
}

variable "master_env" {
  description = "Extra SHADOW_* settings for the master (docs/operations.md), written to /etc/shadowd/master.env."
  type        = map(string)
  default     = {}
}

variable "nodeproxy_env" {
  description = "Extra SHADOW_* settings for the nodes (docs/operations.md), written to /etc/shadowd/nodeproxy.env."
  type        = map(string)
  default     = {}
}

variable "edgeproxy_env" {
  description = "Extra SHADOW_* settings for the edge, written to /etc/shadowd/edgeproxy.env."
  type        = map(string)
  default     = {}
}

variable "project_environment" {
  description = "Environment of the DigitalOcean project: Development, Staging or Production."
  type        = string
  default     = "Production"
}

variable "master_count" {
  description = "How many master droplets serve the fleet. More than one needs create_database (they share PostgreSQL); the edge and the nodes get all of them and move between them on their own."
  type        = number
  default     = 1

  validation {
    condition     = var.master_count >= 1 && var.master_count <= 9
    error_message = "master_count must be 1 to 9."
  }
}

variable "create_database" {
  description = "Create a DigitalOcean managed PostgreSQL cluster for the masters' state instead of SQLite on the master's disk. Needed for master_count > 1."
  type        = bool
  default     = false
}

variable "database_size" {
  description = "Size slug of the managed PostgreSQL nodes."
  type        = string
  default     = "db-s-1vcpu-1gb"
}

variable "database_node_count" {
  description = "Managed PostgreSQL nodes: 2 or 3 keep a standby that DigitalOcean fails over to."
  type        = number
  default     = 2

  validation {
    condition     = var.database_node_count >= 1 && var.database_node_count <= 3
    error_message = "database_node_count must be 1 to 3."
  }
}
