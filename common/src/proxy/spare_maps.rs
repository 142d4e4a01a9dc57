//! Header maps kept per thread for the next message, instead of two allocations (and two frees)
//! per map on every request.
//!
//! On the warm path each hop builds two maps per request, the request's (from its head) and the
//! answer's (from the upstream's head), and drops both once the answer is written: the
//! allocator's share of that was about 1 000 instructions a hop (`docs/benchmarks.md`). A map
//! given back is cleared (its values dropped, its memory kept) and handed out again by
//! [`take`]. Each thread keeps at most [`KEEP`] maps, and none that grew past [`MAX_CAPACITY`]
//! fields, so a client that once sent many headers does not pin the memory for good.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per thread: enough for the requests a worker has in flight at once.
const KEEP: usize = 64;
/// A map that can hold more fields than this is dropped rather than kept.
const MAX_CAPACITY: usize = 48;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map: a kept one when this thread has one, else a new one for `capacity` fields.
pub(crate) fn take(capacity: usize) -> HeaderMap {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| HeaderMap::with_capacity(capacity))
}

/// Keeps `map`'s memory for a later [`take`] on this thread; its fields are dropped now.
pub(crate) fn give_back(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_CAPACITY {
        return;
    }
    // `clear` walks every slot of the map's index, even in an empty map (an answer whose
    // fields passed unparsed gives back an empty one on every request).
    if !map.is_empty() {
        map.clear();
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEEP {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_map_given_back_comes_back_empty_with_its_memory() {
        // A thread of its own: the kept maps are per thread.
        std::thread::spawn(|| {
            let mut map = take(4);
            map.insert("x-a", HeaderValue::from_static("1"));
            map.append("x-a", HeaderValue::from_static("2"));
            let capacity = map.capacity();
            give_back(map);
            let again = take(1);
            assert!(again.is_empty(), "no field survives: {again:?}");
            assert_eq!(again.capacity(), capacity, "the same memory");
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn large_maps_and_more_than_keep_are_not_kept() {
        std::thread::spawn(|| {
            give_back(HeaderMap::with_capacity(MAX_CAPACITY * 4));
            assert_eq!(SPARE.with_borrow(Vec::len), 0);
            for _ in 0..KEEP + 5 {
                give_back(HeaderMap::with_capacity(4));
            }
            assert_eq!(SPARE.with_borrow(Vec::len), KEEP);
        })
        .join()
        .expect("thread");
    }
}
