//! The grid's name records: the containers and services of one grid, the names they
//! answer to (`$name.$grid.$domain`, legacy `$name.$domain`, short `$name`), the reverse
//! (PTR) map of container addresses, and the round-robin rotation of service answers.
//!
//! It owns names and addresses only: it never sees wire bytes and never decides a
//! response code. Every question name is classified ([`Lookup`]); none is an error.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;

use hickory_proto::rr::{Label, Name};

/// The longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// The longest presentation-form domain name without the root dot (RFC 1035 §2.3.4).
const MAX_NAME: usize = 253;

/// One container of the grid: its DNS label, the service it is an instance of, and its
/// overlay address. A registered container counts as a running instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub service: Option<String>,
    pub address: Ipv4Addr,
}

/// Where the grid's names live: `$name.$grid.$domain` and `$name.$domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Lowercase labels of the domain, e.g. `["kontena", "local"]`.
    domain: Vec<String>,
    /// Lowercase grid label, e.g. `testgrid`; `None` serves `$name.$domain` only.
    grid: Option<String>,
    /// Answer single-label questions (`web`), as Docker's embedded DNS does.
    short_names: bool,
}

impl Zone {
    /// A zone for `domain` (dotted, trailing dot optional) and an optional grid label.
    pub fn new(domain: &str, grid: Option<&str>, short_names: bool) -> Result<Zone, RecordError> {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if domain.is_empty() || domain.len() > MAX_NAME {
            return Err(RecordError::InvalidDomain);
        }
        let mut labels = Vec::new();
        for label in domain.split('.') {
            if !is_valid_label(label) {
                return Err(RecordError::InvalidDomain);
            }
            labels.push(label.to_ascii_lowercase());
        }
        let grid = match grid {
            Some(grid) if !is_valid_label(grid) => return Err(RecordError::InvalidGrid),
            Some(grid) => Some(grid.to_ascii_lowercase()),
            None => None,
        };
        Ok(Zone {
            domain: labels,
            grid,
            short_names,
        })
    }

    /// `kontena.local`, no grid, short names on: the defaults of the `dns` section.
    pub fn kontena_local() -> Zone {
        Zone {
            domain: alloc::vec!["kontena".into(), "local".into()],
            grid: None,
            short_names: true,
        }
    }

    /// The zone apex as an absolute name (`kontena.local.`): owner of the SOA.
    pub fn apex(&self) -> Name {
        let mut name = Name::root();
        for label in &self.domain {
            // Labels were validated in `Zone::new`, so appending cannot fail; if it ever
            // did, the root is still a well-formed (if unhelpful) owner name.
            name = match ascii_label(label).and_then(|l| name.append_label(l).ok()) {
                Some(name) => name,
                None => return Name::root(),
            };
        }
        name.set_fqdn(true);
        name
    }

    /// The canonical absolute name of a container label: `$name.$grid.$domain.`.
    fn fqdn_of(&self, label: &str) -> Option<Name> {
        let mut name = Name::root().append_label(ascii_label(label)?).ok()?;
        if let Some(grid) = &self.grid {
            name = name.append_label(ascii_label(grid)?).ok()?;
        }
        for label in &self.domain {
            name = name.append_label(ascii_label(label)?).ok()?;
        }
        name.set_fqdn(true);
        Some(name)
    }
}

/// Why the store refused a change. Nothing is changed when a call returns an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A container or service name is not a single DNS label (`[A-Za-z0-9_-]{1,63}`,
    /// no leading or trailing hyphen).
    InvalidName(String),
    /// The domain is not a dotted sequence of valid labels.
    InvalidDomain,
    /// The grid is not a single valid label.
    InvalidGrid,
    /// The same container name (case-insensitive) appears twice in one `replace_all`.
    DuplicateName(String),
    /// `remove_container` for a name that is not registered.
    UnknownContainer(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::InvalidName(name) => write!(f, "invalid DNS label: {name:?}"),
            RecordError::InvalidDomain => f.write_str("invalid domain"),
            RecordError::InvalidGrid => f.write_str("invalid grid name"),
            RecordError::DuplicateName(name) => write!(f, "duplicate container name: {name:?}"),
            RecordError::UnknownContainer(name) => write!(f, "no such container: {name:?}"),
        }
    }
}

/// Whether a lookup moves a service's round-robin position. Only address questions do:
/// a resolver that asks A and AAAA together must still see the order rotate per query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Advance,
    Keep,
}

/// What the store knows about a question name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A container or service of the grid: its addresses, in answer order.
    Addresses(Vec<Ipv4Addr>),
    /// The zone apex or the grid's own name: exists, holds no address.
    Apex,
    /// Inside the grid domain but nothing is registered under it.
    NxDomain,
    /// Not the grid's (outside the domain, or an unknown short name): forward it.
    NotOurs,
}

/// What the store knows about a reverse (`in-addr.arpa`) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReverseLookup {
    /// Canonical names of the containers holding the address.
    Names(Vec<Name>),
    /// Not a container address: forward it.
    NotOurs,
}

#[derive(Debug, Clone, Default)]
struct Service {
    /// The places (see `RecordStore::by_seq`) of its instances, in registration order.
    instances: BTreeSet<u64>,
    /// Where the next answer starts; wraps.
    next: usize,
}

/// A load-balancer service's name: what it resolves to now (the VIP, or the healthy
/// backends in `dnsrr` mode) and where the next answer starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LbName {
    addresses: Vec<Ipv4Addr>,
    next: usize,
}

/// The record store. Changes are visible to the very next lookup. Adding, replacing or
/// removing one container costs O(log n) whatever the number of containers: every
/// index is keyed, none is scanned.
#[derive(Debug, Clone)]
pub struct RecordStore {
    zone: Zone,
    /// Containers by place: the order they were registered in (a replaced container
    /// keeps its place), which is the order of the document's `containers`.
    by_seq: BTreeMap<u64, Container>,
    /// Lowercase name -> place.
    by_name: BTreeMap<String, u64>,
    /// Keyed by lowercase service name; a service exists while it has an instance.
    services: BTreeMap<String, Service>,
    /// The load balancer's services (`[[services]]`), by lowercase name; they exist
    /// while configured, with or without addresses.
    lb: BTreeMap<String, LbName>,
    /// (address, place) of every container (an address may briefly be held by two
    /// containers while one replaces the other).
    by_address: BTreeSet<(Ipv4Addr, u64)>,
    /// The place of the next new container.
    next_seq: u64,
    /// Bumped on every change; the SOA serial.
    serial: u32,
}

impl RecordStore {
    pub fn new(zone: Zone) -> RecordStore {
        RecordStore {
            zone,
            by_seq: BTreeMap::new(),
            by_name: BTreeMap::new(),
            services: BTreeMap::new(),
            lb: BTreeMap::new(),
            by_address: BTreeSet::new(),
            next_seq: 0,
            serial: 1,
        }
    }

    /// Replaces the load balancer's service names with `services` (name, addresses in
    /// answer order); a name that stays keeps its round-robin position.
    pub fn set_lb_services<I>(&mut self, services: I)
    where
        I: IntoIterator<Item = (String, Vec<Ipv4Addr>)>,
    {
        let mut fresh = BTreeMap::new();
        for (name, addresses) in services {
            let key = name.to_ascii_lowercase();
            let next = self.lb.get(&key).map_or(0, |s| s.next);
            fresh.insert(key, LbName { addresses, next });
        }
        let same = fresh.len() == self.lb.len()
            && fresh
                .iter()
                .all(|(k, v)| self.lb.get(k).is_some_and(|o| o.addresses == v.addresses));
        self.lb = fresh;
        if !same {
            self.bump();
        }
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Moves every record to another domain or grid; the names change, the entries stay.
    pub fn set_zone(&mut self, zone: Zone) {
        if zone != self.zone {
            self.zone = zone;
            self.bump();
        }
    }

    /// Changes with every record change (RFC 1982 arithmetic: it wraps).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        let seq = self.by_name.get(&name.to_ascii_lowercase())?;
        self.by_seq.get(seq)
    }

    /// Every container, in registration order.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.by_seq.values()
    }

    /// Whether the store holds exactly `containers`, in this order.
    pub fn holds_exactly(&self, containers: &[Container]) -> bool {
        self.by_seq.len() == containers.len() && self.by_seq.values().eq(containers.iter())
    }

    /// Adds a container, or updates the one of the same name (case-insensitive), which
    /// keeps its place; returns the previous entry.
    pub fn add_container(
        &mut self,
        container: Container,
    ) -> Result<Option<Container>, RecordError> {
        validate(&container)?;
        let key = container.name.to_ascii_lowercase();
        let (seq, previous) = match self.unlink(&key) {
            Some((seq, previous)) => (seq, Some(previous)),
            None => (self.take_seq(), None),
        };
        self.link(seq, key, container);
        self.bump();
        Ok(previous)
    }

    pub fn remove_container(&mut self, name: &str) -> Result<Container, RecordError> {
        match self.unlink(&name.to_ascii_lowercase()) {
            Some((_, removed)) => {
                self.bump();
                Ok(removed)
            }
            None => Err(RecordError::UnknownContainer(name.into())),
        }
    }

    /// Replaces every container at once. All entries are checked first: on error the
    /// store is unchanged.
    pub fn replace_all<I>(&mut self, containers: I) -> Result<(), RecordError>
    where
        I: IntoIterator<Item = Container>,
    {
        let mut fresh = RecordStore::new(self.zone.clone());
        fresh.lb = self.lb.clone();
        for container in containers {
            validate(&container)?;
            let key = container.name.to_ascii_lowercase();
            if fresh.by_name.contains_key(&key) {
                return Err(RecordError::DuplicateName(container.name));
            }
            let seq = fresh.take_seq();
            fresh.link(seq, key, container);
        }
        fresh.serial = self.serial;
        *self = fresh;
        self.bump();
        Ok(())
    }

    /// Classifies a question name; for a service, returns one address per instance,
    /// starting one further along each time `rotation` is `Advance`.
    pub fn lookup(&mut self, name: &Name, rotation: Rotation) -> Lookup {
        let labels = name.num_labels() as usize;
        let domain = self.zone.domain.len();
        let mut buf = [0u8; MAX_LABEL];

        if labels == 1 {
            if !self.zone.short_names {
                return Lookup::NotOurs;
            }
            let Some(first) = name.iter().next() else {
                return Lookup::NotOurs;
            };
            let Some(key) = lower_label(first, &mut buf) else {
                return Lookup::NotOurs;
            };
            // An unknown short name is someone else's (`localhost`, a search-path
            // probe): it goes upstream like any other name.
            return self.addresses_of(key, rotation).unwrap_or(Lookup::NotOurs);
        }

        if labels < domain || !ends_with(name, &self.zone.domain) {
            return Lookup::NotOurs;
        }
        let mut iter = name.iter();
        match labels - domain {
            0 => Lookup::Apex,
            1 => {
                let key = iter.next().and_then(|first| lower_label(first, &mut buf));
                let Some(key) = key else {
                    return Lookup::NxDomain;
                };
                if let Some(found) = self.addresses_of(key, rotation) {
                    return found;
                }
                match &self.zone.grid {
                    Some(grid) if grid == key => Lookup::Apex,
                    _ => Lookup::NxDomain,
                }
            }
            2 => {
                let first = iter.next();
                let second = iter.next();
                let (Some(first), Some(second), Some(grid)) = (first, second, &self.zone.grid)
                else {
                    return Lookup::NxDomain;
                };
                if !second.eq_ignore_ascii_case(grid.as_bytes()) {
                    return Lookup::NxDomain;
                }
                match lower_label(first, &mut buf) {
                    Some(key) => self.addresses_of(key, rotation).unwrap_or(Lookup::NxDomain),
                    None => Lookup::NxDomain,
                }
            }
            _ => Lookup::NxDomain,
        }
    }

    /// Answers `d.c.b.a.in-addr.arpa` for container addresses.
    pub fn lookup_reverse(&self, name: &Name) -> ReverseLookup {
        let Some(address) = reverse_v4(name) else {
            return ReverseLookup::NotOurs;
        };
        let names = self
            .by_address
            .range((address, 0)..=(address, u64::MAX))
            .filter_map(|(_, seq)| self.by_seq.get(seq))
            .filter_map(|container| self.zone.fqdn_of(&container.name))
            .collect::<Vec<_>>();
        if names.is_empty() {
            ReverseLookup::NotOurs
        } else {
            ReverseLookup::Names(names)
        }
    }

    /// Container first, then a load-balancer service, then the service its instances
    /// name: a container's own name is the more specific, and a configured service
    /// (VIP, health-checked backends) overrides what containers say of themselves.
    fn addresses_of(&mut self, key: &str, rotation: Rotation) -> Option<Lookup> {
        if let Some(container) = self.by_name.get(key).and_then(|s| self.by_seq.get(s)) {
            return Some(Lookup::Addresses(alloc::vec![container.address]));
        }
        if let Some(lb) = self.lb.get_mut(key) {
            let count = lb.addresses.len();
            if count == 0 {
                // Configured, nothing healthy: the name exists with no address.
                return Some(Lookup::Addresses(Vec::new()));
            }
            let start = lb.next % count;
            if rotation == Rotation::Advance {
                lb.next = start.wrapping_add(1);
            }
            let (head, tail) = lb.addresses.split_at(start);
            return Some(Lookup::Addresses(
                tail.iter().chain(head).copied().collect(),
            ));
        }
        let service = self.services.get_mut(key)?;
        let count = service.instances.len();
        if count == 0 {
            return None;
        }
        let start = service.next % count;
        if rotation == Rotation::Advance {
            service.next = start.wrapping_add(1);
        }
        let by_seq = &self.by_seq;
        let addresses = service
            .instances
            .iter()
            .skip(start)
            .chain(service.instances.iter().take(start))
            .filter_map(|seq| by_seq.get(seq))
            .map(|container| container.address)
            .collect();
        Some(Lookup::Addresses(addresses))
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn link(&mut self, seq: u64, key: String, container: Container) {
        if let Some(service) = &container.service {
            self.services
                .entry(service.to_ascii_lowercase())
                .or_default()
                .instances
                .insert(seq);
        }
        self.by_address.insert((container.address, seq));
        self.by_name.insert(key, seq);
        self.by_seq.insert(seq, container);
    }

    /// Takes the container called `key` (lowercase) out of every index; its place.
    fn unlink(&mut self, key: &str) -> Option<(u64, Container)> {
        let seq = self.by_name.remove(key)?;
        let removed = self.by_seq.remove(&seq)?;
        if let Some(service) = &removed.service {
            let service_key = service.to_ascii_lowercase();
            if let Some(entry) = self.services.get_mut(&service_key) {
                entry.instances.remove(&seq);
                if entry.instances.is_empty() {
                    self.services.remove(&service_key);
                }
            }
        }
        self.by_address.remove(&(removed.address, seq));
        Some((seq, removed))
    }

    fn bump(&mut self) {
        self.serial = self.serial.wrapping_add(1);
    }
}

fn validate(container: &Container) -> Result<(), RecordError> {
    if !is_valid_label(&container.name) {
        return Err(RecordError::InvalidName(container.name.clone()));
    }
    match &container.service {
        Some(service) if !is_valid_label(service) => Err(RecordError::InvalidName(service.clone())),
        _ => Ok(()),
    }
}

/// A single label of letters, digits, `-` and `_` (Docker and Kontena names use `_`),
/// not starting or ending with `-` (RFC 952 / RFC 1123 §2.1).
pub fn is_valid_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// A label of ours (checked by [`is_valid_label`]) as hickory's [`Label`], lower case.
///
/// Never `Name::append_label(&str)`, `Name::from_str` or a `Name`'s `Display`: they go
/// through IDNA (`Label::from_utf8`, `Label`'s `Display`), which links the Unicode
/// tables of the `idna` crate, about 150 KiB of the image (docs/PERFORMANCE.md, "Image
/// size"). For the ASCII labels we hold, IDNA's mapping is only this lowercasing.
pub fn ascii_label(label: &str) -> Option<Label> {
    Label::from_ascii(&label.to_ascii_lowercase()).ok()
}

/// Lowercases a wire label into `buf`; `None` if it cannot be one of our keys.
fn lower_label<'b>(label: &[u8], buf: &'b mut [u8; MAX_LABEL]) -> Option<&'b str> {
    let out = buf.get_mut(..label.len())?;
    for (dst, src) in out.iter_mut().zip(label) {
        *dst = src.to_ascii_lowercase();
    }
    core::str::from_utf8(out).ok()
}

fn ends_with(name: &Name, suffix: &[String]) -> bool {
    name.iter()
        .rev()
        .zip(suffix.iter().rev())
        .all(|(label, want)| label.eq_ignore_ascii_case(want.as_bytes()))
}

/// `d.c.b.a.in-addr.arpa` -> `a.b.c.d` (RFC 1035 §3.5); anything else -> `None`.
fn reverse_v4(name: &Name) -> Option<Ipv4Addr> {
    if name.num_labels() != 6 {
        return None;
    }
    let mut labels = name.iter();
    let mut octets = [0u8; 4];
    for slot in octets.iter_mut().rev() {
        let label = core::str::from_utf8(labels.next()?).ok()?;
        // Exactly the decimal form of an octet: no `01`, no `+1`.
        let canonical = label.bytes().all(|b| b.is_ascii_digit())
            && !(label.len() > 1 && label.starts_with('0'));
        if !canonical {
            return None;
        }
        let octet: u8 = label.parse().ok()?;
        *slot = octet;
    }
    let in_addr = labels.next()?;
    let arpa = labels.next()?;
    if in_addr.eq_ignore_ascii_case(b"in-addr") && arpa.eq_ignore_ascii_case(b"arpa") {
        Some(Ipv4Addr::from(octets))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::str::FromStr;

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    fn container(name: &str, service: Option<&str>, address: [u8; 4]) -> Container {
        Container {
            name: name.into(),
            service: service.map(Into::into),
            address: Ipv4Addr::from(address),
        }
    }

    /// Seed 000's example grid: `testgrid`, 2 x `webservice` and 1 x `db`.
    fn seed_store() -> RecordStore {
        let zone = Zone::new("kontena.local", Some("testgrid"), true).unwrap();
        let mut store = RecordStore::new(zone);
        store
            .replace_all(vec![
                container("testapp-db-1", Some("testapp-db"), [10, 81, 1, 1]),
                container(
                    "testapp-webservice-1",
                    Some("testapp-webservice"),
                    [10, 81, 1, 2],
                ),
                container(
                    "testapp-webservice-2",
                    Some("testapp-webservice"),
                    [10, 81, 1, 3],
                ),
            ])
            .unwrap();
        store
    }

    fn addrs(list: &[[u8; 4]]) -> Lookup {
        Lookup::Addresses(list.iter().map(|a| Ipv4Addr::from(*a)).collect())
    }

    #[test]
    fn container_names_in_grid_legacy_and_short_form() {
        let mut store = seed_store();
        for q in [
            "testapp-db-1.testgrid.kontena.local.",
            "testapp-db-1.kontena.local.",
            "testapp-db-1.",
            "testapp-db-1.testgrid.kontena.local",
        ] {
            assert_eq!(
                store.lookup(&name(q), Rotation::Advance),
                addrs(&[[10, 81, 1, 1]]),
                "{q}"
            );
        }
    }

    #[test]
    fn names_are_case_insensitive() {
        let mut store = seed_store();
        assert_eq!(
            store.lookup(
                &name("TestApp-DB-1.TESTGRID.Kontena.LOCAL."),
                Rotation::Keep
            ),
            addrs(&[[10, 81, 1, 1]])
        );
        assert_eq!(
            store.lookup(&name("TESTAPP-DB."), Rotation::Keep),
            addrs(&[[10, 81, 1, 1]])
        );
        // Registered in upper case, asked in lower case.
        store
            .add_container(container("Loud-1", Some("LOUD"), [10, 81, 2, 1]))
            .unwrap();
        assert_eq!(
            store.lookup(&name("loud.kontena.local."), Rotation::Keep),
            addrs(&[[10, 81, 2, 1]])
        );
        assert!(store.container("LOUD-1").is_some());
    }

    #[test]
    fn lb_service_names_rotate_and_yield_to_containers() {
        let mut store =
            RecordStore::new(Zone::new("kontena.local", Some("testgrid"), true).unwrap());
        store
            .replace_all([
                container("web", None, [10, 81, 1, 1]),
                container("app-1", Some("db"), [10, 81, 1, 2]),
            ])
            .unwrap();
        let (a, b) = (Ipv4Addr::new(10, 81, 2, 1), Ipv4Addr::new(10, 81, 2, 2));
        let serial = store.serial();
        store.set_lb_services([
            ("web".into(), alloc::vec![Ipv4Addr::new(10, 81, 255, 1)]),
            ("db".into(), alloc::vec![a, b]),
            ("empty".into(), Vec::new()),
        ]);
        assert_ne!(store.serial(), serial);
        let addrs = |store: &mut RecordStore, n: &str| store.lookup(&name(n), Rotation::Advance);
        // A container's own name wins; a configured service beats its instances' one.
        assert_eq!(
            addrs(&mut store, "web.testgrid.kontena.local."),
            Lookup::Addresses(alloc::vec![Ipv4Addr::new(10, 81, 1, 1)])
        );
        assert_eq!(
            addrs(&mut store, "db."),
            Lookup::Addresses(alloc::vec![a, b])
        );
        assert_eq!(
            addrs(&mut store, "db.kontena.local."),
            Lookup::Addresses(alloc::vec![b, a])
        );
        assert_eq!(addrs(&mut store, "empty."), Lookup::Addresses(Vec::new()));
        // The same names again change nothing, and keep the rotation; containers
        // replaced keep the services.
        let serial = store.serial();
        store.set_lb_services([
            ("web".into(), alloc::vec![Ipv4Addr::new(10, 81, 255, 1)]),
            ("db".into(), alloc::vec![a, b]),
            ("empty".into(), Vec::new()),
        ]);
        assert_eq!(store.serial(), serial);
        store.replace_all([]).unwrap();
        assert_eq!(
            addrs(&mut store, "db.testgrid.kontena.local."),
            Lookup::Addresses(alloc::vec![a, b])
        );
        assert_eq!(
            addrs(&mut store, "web."),
            Lookup::Addresses(alloc::vec![Ipv4Addr::new(10, 81, 255, 1)])
        );
        store.set_lb_services([]);
        assert_eq!(addrs(&mut store, "empty."), Lookup::NotOurs);
        assert_eq!(addrs(&mut store, "empty.kontena.local."), Lookup::NxDomain);
    }

    #[test]
    fn service_answers_rotate_per_advancing_lookup() {
        let mut store = seed_store();
        let q = name("testapp-webservice.testgrid.kontena.local.");
        let first = store.lookup(&q, Rotation::Advance);
        let second = store.lookup(&q, Rotation::Advance);
        let third = store.lookup(&q, Rotation::Advance);
        assert_eq!(first, addrs(&[[10, 81, 1, 2], [10, 81, 1, 3]]));
        assert_eq!(second, addrs(&[[10, 81, 1, 3], [10, 81, 1, 2]]));
        assert_eq!(third, first);
        // `Keep` reports the current order without moving it.
        assert_eq!(store.lookup(&q, Rotation::Keep), second);
        assert_eq!(store.lookup(&q, Rotation::Keep), second);
    }

    #[test]
    fn rotation_visits_every_instance_first_once_per_cycle() {
        let zone = Zone::new("kontena.local", Some("g"), true).unwrap();
        let mut store = RecordStore::new(zone);
        for i in 0..7u8 {
            store
                .add_container(container(
                    &alloc::format!("web-{i}"),
                    Some("web"),
                    [10, 81, 0, i],
                ))
                .unwrap();
        }
        let q = name("web.g.kontena.local.");
        let mut firsts = Vec::new();
        for _ in 0..7 {
            let Lookup::Addresses(list) = store.lookup(&q, Rotation::Advance) else {
                panic!("service must resolve");
            };
            assert_eq!(list.len(), 7);
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 7, "every instance exactly once");
            firsts.push(list[0]);
        }
        firsts.sort();
        firsts.dedup();
        assert_eq!(firsts.len(), 7, "each instance leads once per cycle");
    }

    #[test]
    fn unknown_names_inside_domain_are_nxdomain_outside_not_ours() {
        let mut store = seed_store();
        for q in [
            "nope.testgrid.kontena.local.",
            "nope.kontena.local.",
            "a.b.testgrid.kontena.local.",
            "testapp-db-1.othergrid.kontena.local.",
        ] {
            assert_eq!(
                store.lookup(&name(q), Rotation::Keep),
                Lookup::NxDomain,
                "{q}"
            );
        }
        for q in [
            "example.com.",
            "local.",
            "nope.",
            "kontena.local.example.com.",
        ] {
            assert_eq!(
                store.lookup(&name(q), Rotation::Keep),
                Lookup::NotOurs,
                "{q}"
            );
        }
        assert_eq!(
            store.lookup(&name("kontena.local."), Rotation::Keep),
            Lookup::Apex
        );
        assert_eq!(
            store.lookup(&name("TestGrid.kontena.local."), Rotation::Keep),
            Lookup::Apex
        );
    }

    #[test]
    fn short_names_can_be_turned_off() {
        let zone = Zone::new("kontena.local", Some("testgrid"), false).unwrap();
        let mut store = RecordStore::new(zone);
        store
            .add_container(container("web-1", Some("web"), [10, 81, 0, 1]))
            .unwrap();
        assert_eq!(store.lookup(&name("web."), Rotation::Keep), Lookup::NotOurs);
        assert_eq!(
            store.lookup(&name("web.kontena.local."), Rotation::Keep),
            addrs(&[[10, 81, 0, 1]])
        );
    }

    #[test]
    fn removal_and_update_are_visible_on_next_lookup() {
        let mut store = seed_store();
        let serial = store.serial();
        let q = name("testapp-webservice.kontena.local.");
        store.remove_container("TESTAPP-webservice-1").unwrap();
        assert_ne!(store.serial(), serial);
        assert_eq!(
            store.lookup(&q, Rotation::Advance),
            addrs(&[[10, 81, 1, 3]])
        );
        assert_eq!(
            store.lookup(&name("testapp-webservice-1.kontena.local."), Rotation::Keep),
            Lookup::NxDomain
        );
        store.remove_container("testapp-webservice-2").unwrap();
        assert_eq!(
            store.lookup(&q, Rotation::Advance),
            Lookup::NxDomain,
            "empty service is gone"
        );

        // Same name, new address and service: the old links go.
        store
            .add_container(container("testapp-db-1", Some("other"), [10, 81, 9, 9]))
            .unwrap();
        assert_eq!(
            store.lookup(&name("testapp-db.kontena.local."), Rotation::Keep),
            Lookup::NxDomain
        );
        assert_eq!(
            store.lookup(&name("other."), Rotation::Keep),
            addrs(&[[10, 81, 9, 9]])
        );
        assert_eq!(
            store.lookup_reverse(&name("1.1.81.10.in-addr.arpa.")),
            ReverseLookup::NotOurs
        );
        assert_eq!(
            store.remove_container("ghost"),
            Err(RecordError::UnknownContainer("ghost".into()))
        );
    }

    #[test]
    fn reverse_names_for_container_addresses() {
        let store = seed_store();
        assert_eq!(
            store.lookup_reverse(&name("3.1.81.10.in-addr.arpa.")),
            ReverseLookup::Names(vec![name("testapp-webservice-2.testgrid.kontena.local.")])
        );
        assert_eq!(
            store.lookup_reverse(&name("3.1.81.10.IN-ADDR.ARPA.")),
            ReverseLookup::Names(vec![name("testapp-webservice-2.testgrid.kontena.local.")])
        );
        for q in [
            "9.1.81.10.in-addr.arpa.",
            "1.81.10.in-addr.arpa.",
            "03.1.81.10.in-addr.arpa.",
            "256.1.81.10.in-addr.arpa.",
            "3.1.81.10.ip6.arpa.",
            "x.1.81.10.in-addr.arpa.",
        ] {
            assert_eq!(
                store.lookup_reverse(&name(q)),
                ReverseLookup::NotOurs,
                "{q}"
            );
        }
    }

    #[test]
    fn reverse_without_grid_uses_legacy_name() {
        let zone = Zone::new("kontena.local.", None, true).unwrap();
        let mut store = RecordStore::new(zone);
        store
            .add_container(container("db-1", None, [10, 81, 0, 7]))
            .unwrap();
        assert_eq!(
            store.lookup_reverse(&name("7.0.81.10.in-addr.arpa.")),
            ReverseLookup::Names(vec![name("db-1.kontena.local.")])
        );
        // Without a grid a two-label prefix is never ours.
        assert_eq!(
            store.lookup(&name("db-1.x.kontena.local."), Rotation::Keep),
            Lookup::NxDomain
        );
    }

    #[test]
    fn invalid_input_leaves_store_unchanged() {
        let mut store = seed_store();
        let before: Vec<Container> = store.containers().cloned().collect();
        let serial = store.serial();
        for bad in ["", "a.b", "-x", "x-", "sp ace", "ü", &"a".repeat(64)] {
            assert_eq!(
                store.add_container(container(bad, None, [1, 2, 3, 4])),
                Err(RecordError::InvalidName(bad.into()))
            );
        }
        assert!(store
            .add_container(container("ok", Some("bad.service"), [1, 2, 3, 4]))
            .is_err());
        assert_eq!(
            store.replace_all(vec![
                container("a", None, [1, 1, 1, 1]),
                container("A", None, [1, 1, 1, 2]),
            ]),
            Err(RecordError::DuplicateName("A".into()))
        );
        assert!(store
            .replace_all(vec![
                container("fine", None, [1, 1, 1, 1]),
                container("no.t", None, [1, 1, 1, 2])
            ])
            .is_err());
        assert_eq!(store.containers().cloned().collect::<Vec<_>>(), before);
        assert_eq!(store.serial(), serial);
        assert!(Zone::new("", None, true).is_err());
        assert!(Zone::new("a..b", None, true).is_err());
        assert!(Zone::new("kontena.local", Some("a.b"), true).is_err());
    }

    #[test]
    fn shared_address_is_reversed_to_every_holder_until_one_leaves() {
        let mut store = seed_store();
        store
            .add_container(container("new-db-1", Some("testapp-db"), [10, 81, 1, 1]))
            .unwrap();
        let ReverseLookup::Names(names) = store.lookup_reverse(&name("1.1.81.10.in-addr.arpa."))
        else {
            panic!("address is held");
        };
        assert_eq!(names.len(), 2);
        store.remove_container("testapp-db-1").unwrap();
        assert_eq!(
            store.lookup_reverse(&name("1.1.81.10.in-addr.arpa.")),
            ReverseLookup::Names(vec![name("new-db-1.testgrid.kontena.local.")])
        );
    }

    #[test]
    fn reverse_names_are_lower_case_ascii_also_with_underscores() {
        let mut store = seed_store();
        store
            .add_container(container("My_App-1", None, [10, 81, 1, 9]))
            .unwrap();
        let ReverseLookup::Names(names) = store.lookup_reverse(&name("9.1.81.10.in-addr.arpa."))
        else {
            panic!("address is held");
        };
        let texts: Vec<String> = names.iter().map(Name::to_ascii).collect();
        assert_eq!(texts, ["my_app-1.testgrid.kontena.local."]);
        let zone = Zone::new("Kontena.LOCAL", None, true).unwrap();
        assert_eq!(zone.apex().to_ascii(), "kontena.local.");
    }

    #[test]
    fn apex_is_absolute_domain() {
        let store = seed_store();
        assert_eq!(store.zone().apex(), name("kontena.local."));
        assert!(store.zone().apex().is_fqdn());
    }
}
