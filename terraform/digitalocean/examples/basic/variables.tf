variable "region" {
  description = "DigitalOcean region (with Spaces), e.g. ams3, fra1, nyc3, sfo3, sgp1."
  type        = string
  default     = "ams3"
}

variable "name" {
  description = "Name of the cluster (prefixes every resource)."
  type        = string
  default     = "shadow"
}

variable "release_base_url" {
  description = "HTTPS directory holding the Linux x86_64 binaries shadow-master, shadow-nodeproxy and shadow-edgeproxy."
  type        = string
}

variable "binary_sha256" {
  description = "SHA-256 of the binaries, keyed master, nodeproxy, edgeproxy."
  type        = map(string)
  default     = {}
}

variable "ssh_keys" {
  description = "IDs or fingerprints of DigitalOcean SSH keys for root."
  type        = list(string)
}

variable "ssh_source_addresses" {
  description = "Networks allowed to SSH to the droplets."
  type        = list(string)
  default     = []
}

variable "node_count" {
  description = "Number of nodes."
  type        = number
  default     = 2
}

variable "node_do_token" {
  description = "DigitalOcean token for the nodes' `do` block volumes; null = none."
  type        = string
  default     = null
  sensitive   = true
}

variable "domain" {
  description = "Parent domain of the apps (e.g. apps.example.com); empty = none."
  type        = string
  default     = ""
}

variable "dns_zone" {
  description = "DigitalOcean-managed domain containing var.domain; null = manage DNS yourself."
  type        = string
  default     = null
}
