//! A session's frames waiting to be written: the first held inline, so that a send to a
//! session with nothing waiting (the common case: a notification is written before the next
//! comes) allocates nothing, and a broadcast to N sessions makes no allocation per session.
//! More frames wait in a `VecDeque`, allocated while there are more and freed once written.

use std::collections::VecDeque;

use super::encoded::Frame;

#[derive(Default)]
pub(super) enum Queue {
    #[default]
    Empty,
    One(Frame),
    /// Boxed, so that the queue is no larger than a `VecDeque` (a session's size is its cost
    /// when idle); only a socket with a backlog has one, and pays the extra allocation.
    #[allow(clippy::box_collection)]
    Many(Box<VecDeque<Frame>>),
}

type Iter<'a> = std::iter::Chain<std::slice::Iter<'a, Frame>, std::slice::Iter<'a, Frame>>;

impl Queue {
    pub(super) fn len(&self) -> usize {
        match self {
            Queue::Empty => 0,
            Queue::One(_) => 1,
            Queue::Many(q) => q.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push_back(&mut self, frame: Frame) {
        self.push(frame, false);
    }

    pub(super) fn push_front(&mut self, frame: Frame) {
        self.push(frame, true);
    }

    fn push(&mut self, frame: Frame, front: bool) {
        *self = match std::mem::take(self) {
            Queue::Empty => Queue::One(frame),
            Queue::One(first) => {
                let both = if front { [frame, first] } else { [first, frame] };
                Queue::Many(Box::new(VecDeque::from(both)))
            }
            Queue::Many(mut q) => {
                if front {
                    q.push_front(frame)
                } else {
                    q.push_back(frame)
                }
                Queue::Many(q)
            }
        };
    }

    pub(super) fn front(&self) -> Option<&Frame> {
        self.iter().next()
    }

    /// Takes the first frame; the buffer of several goes once the last is taken.
    pub(super) fn pop_front(&mut self) -> Option<Frame> {
        match std::mem::take(self) {
            Queue::Empty => None,
            Queue::One(first) => Some(first),
            Queue::Many(mut q) => {
                let first = q.pop_front();
                if !q.is_empty() {
                    *self = Queue::Many(q);
                }
                first
            }
        }
    }

    pub(super) fn iter(&self) -> Iter<'_> {
        match self {
            Queue::Empty => [].iter().chain([].iter()),
            Queue::One(first) => std::slice::from_ref(first).iter().chain([].iter()),
            Queue::Many(q) => {
                let (a, b) = q.as_slices();
                a.iter().chain(b.iter())
            }
        }
    }

    /// The frames in order, in one slice.
    pub(super) fn contiguous(&mut self) -> &[Frame] {
        match self {
            Queue::Empty => &[],
            Queue::One(first) => std::slice::from_ref(first),
            Queue::Many(q) => q.make_contiguous(),
        }
    }

    /// Drops the first `n` frames.
    pub(super) fn drop_front(&mut self, n: usize) {
        for _ in 0..n.min(self.len()) {
            self.pop_front();
        }
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Frame) -> bool) {
        let emptied = match self {
            Queue::Empty => false,
            Queue::One(first) => !keep(first),
            Queue::Many(q) => {
                q.retain(keep);
                q.is_empty()
            }
        };
        if emptied {
            self.clear();
        }
    }

    pub(super) fn clear(&mut self) {
        *self = Queue::Empty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Frame {
        Frame::text(|b| b.extend_from_slice(&[b'4', b'0' + n]))
    }

    fn packets(q: &Queue) -> Vec<Vec<u8>> {
        q.iter().map(|f| f.packet().to_vec()).collect()
    }

    #[test]
    fn a_queue_is_no_larger_than_a_vecdeque() {
        assert_eq!(std::mem::size_of::<Queue>(), std::mem::size_of::<VecDeque<Frame>>());
    }

    #[test]
    fn frames_keep_their_order_through_every_operation() {
        let mut q = Queue::default();
        assert!(q.is_empty() && q.front().is_none() && q.pop_front().is_none());
        q.push_back(frame(1));
        assert!(matches!(q, Queue::One(_)), "one frame is held inline");
        q.push_back(frame(2));
        q.push_front(frame(0));
        q.push_back(frame(3));
        assert_eq!(packets(&q), [b"40", b"41", b"42", b"43"]);
        assert_eq!(q.contiguous().len(), 4);
        q.drop_front(1);
        assert_eq!(q.front().map(|f| f.packet().to_vec()), Some(b"41".to_vec()));
        q.retain(|f| f.packet() != b"42");
        assert_eq!(packets(&q), [b"41", b"43"]);
        assert_eq!(q.pop_front().map(|f| f.packet().to_vec()), Some(b"41".to_vec()));
        assert_eq!(q.pop_front().map(|f| f.packet().to_vec()), Some(b"43".to_vec()));
        assert!(matches!(q, Queue::Empty), "the buffer goes with the last frame");
        q.push_front(frame(9));
        q.retain(|_| false);
        assert!(q.is_empty());
        q.push_back(frame(5));
        q.clear();
        assert_eq!(q.len(), 0);
    }
}
