//! Labels whose values are a closed set: the owner of a fact (why a record was dropped, why a
//! socket was refused, whom a notification was for) declares its values once, and gets one
//! counter per value, registered at zero.

use std::marker::PhantomData;

use metrics::Counter;

/// A type whose values are the values of one metric label.
pub trait LabelValue: Copy + 'static {
    /// The label's name (`reason`, `kind`).
    const KEY: &'static str;
    /// Every value, in the order of [`LabelValue::index`].
    const ALL: &'static [Self];
    fn as_label(self) -> &'static str;
    /// The value's place in [`LabelValue::ALL`].
    fn index(self) -> usize;
}

/// One counter of a metric per value of `T`: counting is an index, not a lookup.
pub struct ByLabel<T> {
    counters: Box<[Counter]>,
    of: PhantomData<fn(T)>,
}

impl<T: LabelValue> ByLabel<T> {
    pub(super) fn new(counter: impl Fn(&'static str) -> Counter) -> Self {
        Self { counters: T::ALL.iter().map(|v| counter(v.as_label())).collect(), of: PhantomData }
    }

    pub fn get(&self, value: T) -> &Counter {
        &self.counters[value.index()]
    }

    pub fn increment(&self, value: T, n: u64) {
        self.get(value).increment(n);
    }
}

/// Who a notification was addressed to: the `kind` label of the published and delivered counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudienceKind {
    User,
    Group,
    Broadcast,
}

impl LabelValue for AudienceKind {
    const KEY: &'static str = "kind";
    const ALL: &'static [Self] = &[Self::User, Self::Group, Self::Broadcast];

    fn as_label(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Group => "group",
            Self::Broadcast => "broadcast",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One counter per [`AudienceKind`].
pub type PerKind = ByLabel<AudienceKind>;
