//! Link blocks: the links a backfill creates, many to a row.
//!
//! A backfill links every row it copies, and a row of `links` per link
//! costs two B-tree entries besides the tuple: on PostgreSQL that was most
//! of what a backfill spent beyond the copy itself. So a backfill stores
//! runs of its fresh links with integer keys as blocks instead: a row of
//! `link_blocks` holds up to [`CRM_BUCKET`] links, their keys and shadows
//! in arrays, all of whose CRM keys fall in one bucket of [`CRM_BUCKET`]
//! consecutive values and all of whose external keys in one of
//! 128 (see [`EXTERNAL_SHIFT`]), both ascending. Keys from a sequence or an
//! identity fill blocks; uuids, codes and scattered keys stay rows. An
//! index on each side's bucket finds the blocks that can hold a key with
//! one B-tree probe (or, for a page of keys in few buckets, those
//! buckets' blocks in one scan), and the key's place in the block's array
//! gives the link.
//!
//! A block is never rewritten. A row of `links` for one of its CRM keys
//! overrides its entry: a link that changes lives on as a row. Before a
//! link is written, the block entries of its external key are copied into
//! `links` (`materialize_in`), so that the unique external key there keeps
//! guarding that side exactly as before. The view `all_links` shows rows
//! and live block entries as one table.

use crate::db::postgres::quote;
use crate::state::keys;
use std::ops::Range;
use tokio_postgres::GenericClient;

/// CRM keys of a block share `key >> CRM_SHIFT`: a bucket of 64 values.
pub(crate) const CRM_SHIFT: u32 = 6;
/// External keys of a block share `key >> EXTERNAL_SHIFT`: a bucket of
/// 128 values, so that the keys a few writers draw from one sequence at
/// once still fill blocks.
pub(crate) const EXTERNAL_SHIFT: u32 = 7;
const CRM_BUCKET: usize = 1 << CRM_SHIFT;

/// The shift that makes a `side` (`crm` or `external`) key its bucket.
fn shift(side: &str) -> u32 {
    if side == "crm" {
        CRM_SHIFT
    } else {
        EXTERNAL_SHIFT
    }
}
/// Bytes of keys and shadows in a block, at most: a block stays within
/// one heap page (the table keeps rows of up to 8,160 bytes in place), so
/// that a lookup reads one page and no TOAST.
const BLOCK_BYTES: usize = 7_600;
/// Fewer links than this stay rows.
const BLOCK_MIN: usize = 2;

/// How many links of `bytes` bytes each (keys and shadow, on average) a
/// block holds.
fn links_per_block(bytes: usize) -> usize {
    // Each array element takes a header and padding besides its bytes.
    (BLOCK_BYTES / (bytes + 24).max(1)).clamp(BLOCK_MIN, CRM_BUCKET)
}

/// The runs of links (by place) that go into blocks: integer keys on both
/// sides, both strictly ascending, each side within one bucket, at most
/// `max` (see [`links_per_block`]) and at least [`BLOCK_MIN`] of them.
/// Any other key (text, uuid, a key out of order) stays a row.
fn runs(crm: &[Option<i64>], external: &[Option<i64>], max: usize) -> Vec<Range<usize>> {
    let n = crm.len().min(external.len());
    let mut out = Vec::new();
    let mut start = 0;
    let joins = |keys: &[Option<i64>], start: usize, i: usize, shift: u32| match (
        keys[start],
        keys[i - 1],
        keys[i],
    ) {
        (Some(first), Some(a), Some(b)) => a < b && first >> shift == b >> shift,
        _ => false,
    };
    for i in 1..=n {
        let ends = i == n
            || i - start >= max.max(BLOCK_MIN)
            || !joins(crm, start, i, CRM_SHIFT)
            || !joins(external, start, i, EXTERNAL_SHIFT);
        if ends {
            let r = start..i;
            if r.len() >= BLOCK_MIN && crm[r.start].is_some() && external[r.start].is_some() {
                out.push(r);
            }
            start = i;
        }
    }
    out
}

/// A row of `link_blocks` but its entity, in the order of [`COLUMNS`].
pub(crate) struct Block<'a> {
    /// `crm_lo`, `crm_hi`, `external_lo`, `external_hi`.
    pub bounds: [i64; 4],
    pub crm: Vec<i64>,
    pub external: Vec<i64>,
    pub shadows: Vec<&'a [u8]>,
}

/// The columns of `link_blocks`: `entity`, then what a [`Block`] holds.
pub(crate) const COLUMNS: [&str; 8] = [
    "entity",
    "crm_lo",
    "crm_hi",
    "external_lo",
    "external_hi",
    "crm_keys",
    "external_keys",
    "shadows",
];

/// New links as blocks: those of the [`runs`] of `crm` and `external`
/// (their keys, `None` where a key is not an integer) with their
/// `shadows`, averaging `bytes` of keys and shadow a link. Also says, by
/// place, which links a block took; the others stay rows.
pub(crate) fn split<'a>(
    crm: &[Option<i64>],
    external: &[Option<i64>],
    shadows: &[&'a [u8]],
    bytes: usize,
) -> (Vec<Block<'a>>, Vec<bool>) {
    let runs = runs(crm, external, links_per_block(bytes));
    let mut in_block = vec![false; crm.len()];
    // Every key of a run is an integer.
    let ints = |keys: &[Option<i64>]| -> Vec<i64> { keys.iter().flatten().copied().collect() };
    let blocks = runs
        .into_iter()
        .map(|r| {
            in_block[r.clone()].fill(true);
            let (crm, external) = (ints(&crm[r.clone()]), ints(&external[r.clone()]));
            Block {
                bounds: [
                    crm[0],
                    crm[crm.len() - 1],
                    external[0],
                    external[external.len() - 1],
                ],
                crm,
                external,
                shadows: shadows[r].to_vec(),
            }
        })
        .collect();
    (blocks, in_block)
}

/// SQL for the live block entries (`crm_key` and `external_key` in stored
/// form, `shadow`) of entity `$entity` whose `side` key (`crm` or
/// `external`) is one of the integers in `$keys` and has no row in
/// `links`. With `paired`, the CRM keys (stored form) in `$paired` go
/// with `$keys` place by place, and an entry of a key's own pair is left
/// out.
pub(crate) fn entries_sql(s: &str, side: &str, entity: u8, keys: u8, paired: Option<u8>) -> String {
    let shift = shift(side);
    let overridden = if side == "crm" {
        String::new()
    } else {
        format!(
            " AND NOT EXISTS (SELECT 1 FROM {s}.links o \
                               WHERE o.entity = ${entity} AND o.crm_key = {s}.key_bytes(b.crm_keys[b.i]))"
        )
    };
    let (source, other_pair) = match paired {
        Some(p) => (
            format!("unnest(${keys}::bigint[], ${p}::bytea[]) AS k(key, crm)"),
            format!(" AND {s}.key_bytes(b.crm_keys[b.i]) <> k.crm"),
        ),
        None => (
            format!("unnest(${keys}::bigint[]) AS k(key)"),
            String::new(),
        ),
    };
    // A probe of the bucket index per key (OFFSET 0 keeps the planner from
    // joining the whole table instead, which it would do for want of
    // statistics on the buckets).
    format!(
        "SELECT {s}.key_bytes(b.crm_keys[b.i]) AS crm_key, \
                {s}.key_bytes(b.external_keys[b.i]) AS external_key, b.shadows[b.i] AS shadow \
           FROM {source} \
          CROSS JOIN LATERAL ( \
                SELECT b.crm_keys, b.external_keys, b.shadows, \
                       array_position(b.{side}_keys, k.key) AS i \
                  FROM {s}.link_blocks b \
                 WHERE b.entity = ${entity} AND (b.{side}_lo >> {shift}) = (k.key >> {shift}) \
                OFFSET 0) AS b \
          WHERE b.i IS NOT NULL \
            AND NOT EXISTS (SELECT 1 FROM {s}.links l \
                             WHERE l.entity = ${entity} AND l.{side}_key = {s}.key_bytes(k.key))\
                {overridden}{other_pair}"
    )
}

/// The buckets of `side` (`crm` or `external`) that `keys` fall in, when
/// they are few enough to read whole (eight keys or more a bucket, as
/// for a page of rows read in key order); `None` for scattered keys,
/// which are better probed one by one.
pub(crate) fn dense_buckets(side: &str, keys: &[i64]) -> Option<Vec<i64>> {
    let shift = shift(side);
    let mut buckets: Vec<i64> = keys.iter().map(|k| k >> shift).collect();
    buckets.sort_unstable();
    buckets.dedup();
    (buckets.len() * 8 <= keys.len()).then_some(buckets)
}

/// SQL for what [`entries_sql`] reads, for keys whose buckets are few
/// (`dense_buckets`, in `$buckets`): the blocks of those buckets, read
/// in one scan of the bucket index and joined to the keys.
pub(crate) fn entries_by_bucket_sql(
    s: &str,
    side: &str,
    entity: u8,
    keys: u8,
    buckets: u8,
) -> String {
    let shift = shift(side);
    let column = if side == "crm" { "c" } else { "x" };
    format!(
        "SELECT {s}.key_bytes(u.c) AS crm_key, {s}.key_bytes(u.x) AS external_key, \
                u.sh AS shadow \
           FROM {s}.link_blocks b \
          CROSS JOIN LATERAL unnest(b.crm_keys, b.external_keys, b.shadows) AS u(c, x, sh) \
           JOIN unnest(${keys}::bigint[]) AS k(key) ON k.key = u.{column} \
          WHERE b.entity = ${entity} AND (b.{side}_lo >> {shift}) = ANY (${buckets}::bigint[]) \
            AND NOT EXISTS (SELECT 1 FROM {s}.links o \
                             WHERE o.entity = ${entity} AND o.crm_key = {s}.key_bytes(u.c))"
    )
}

/// The integers among stored keys: only they can be in a block.
pub(crate) fn ints(stored: &[Vec<u8>]) -> Vec<i64> {
    stored.iter().filter_map(|k| keys::stored_int(k)).collect()
}

/// Before links `(crm[i], external[i])` (stored form) are written:
/// copies into `links` the live block entries of `entity` that hold one
/// of those external keys with another CRM key, so that the unique
/// external key there refuses a second link to it, as it refuses one
/// between rows. An entry of the same pair needs no copy: the row written
/// for its CRM key overrides it.
pub(crate) async fn materialize_in<C: GenericClient>(
    client: &C,
    schema: &str,
    entity: &str,
    crm: &[Vec<u8>],
    external: &[Vec<u8>],
) -> Result<(), tokio_postgres::Error> {
    let (ext, crm): (Vec<i64>, Vec<&[u8]>) = external
        .iter()
        .zip(crm)
        .filter_map(|(x, c)| keys::stored_int(x).map(|x| (x, c.as_slice())))
        .unzip();
    if ext.is_empty() {
        return Ok(());
    }
    let s = quote(schema);
    let sql = format!(
        "INSERT INTO {s}.links (entity, crm_key, external_key, shadow) \
         SELECT $1, crm_key, external_key, shadow FROM ({}) AS m \
         ON CONFLICT DO NOTHING",
        entries_sql(&s, "external", 1, 2, Some(3)),
    );
    client.execute(&sql, &[&entity, &ext, &crm]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(crm: &[i64], ext: &[i64]) -> Vec<Range<usize>> {
        let c: Vec<Option<i64>> = crm.iter().copied().map(Some).collect();
        let x: Vec<Option<i64>> = ext.iter().copied().map(Some).collect();
        runs(&c, &x, CRM_BUCKET)
    }

    #[test]
    fn ascending_keys_fill_their_buckets() {
        // CRM keys 0, 3, 6, ...: 22 of them in each bucket of 64.
        let crm: Vec<i64> = (0..60).map(|i| i * 3).collect();
        let ext: Vec<i64> = (0..60).map(|i| 1024 + i).collect();
        assert_eq!(plan(&crm, &ext), vec![0..22, 22..43, 43..60]);
        // External keys two apart (two writers on one sequence): a bucket
        // of 128 takes 64 of them, so the CRM's bucket ends a block first.
        let crm: Vec<i64> = (0..200).collect();
        let ext: Vec<i64> = (0..200).map(|i| 2 * i).collect();
        assert_eq!(plan(&crm, &ext), vec![0..64, 64..128, 128..192, 192..200]);
    }

    #[test]
    fn a_key_that_does_not_ascend_ends_a_block() {
        let crm: Vec<i64> = (0..60).collect();
        let mut ext: Vec<i64> = (0..60).collect();
        ext[40] = 38; // below its neighbour: the block ends before it
        assert_eq!(plan(&crm, &ext), vec![0..40, 40..60]);
        // Equal neighbours cannot share a block either.
        let mut crm2 = crm.clone();
        crm2[50] = crm2[49];
        assert_eq!(plan(&crm2, &crm), vec![0..50, 50..60]);
    }

    #[test]
    fn scattered_and_lone_keys_stay_rows() {
        let crm: Vec<i64> = (0..200).collect();
        // A pseudo-random permutation: no two neighbours share a bucket.
        let ext: Vec<i64> = (0..200i64)
            .map(|i| (i * 2_654_435_761) % 4_294_967_291)
            .collect();
        assert!(plan(&crm, &ext).is_empty(), "{:?}", plan(&crm, &ext));
        let wide: Vec<i64> = (0..200).map(|i| i * 1_000).collect();
        assert!(plan(&crm, &wide).is_empty());
        assert!(plan(&[7], &[9]).is_empty());
        assert_eq!(plan(&[7, 8], &[9, 12]), vec![0..2]);
        // Negative keys have buckets too.
        assert_eq!(plan(&[-64, -1], &[-128, -1]), vec![0..2]);
        assert!(plan(&[-1, 0], &[5, 6]).is_empty());
    }

    #[test]
    fn a_key_that_is_not_an_integer_stays_a_row() {
        let crm: Vec<Option<i64>> = (0..10).map(Some).collect();
        let mut ext = crm.clone();
        ext[5] = None;
        assert_eq!(runs(&crm, &ext, CRM_BUCKET), vec![0..5, 6..10]);
    }

    #[test]
    fn split_makes_blocks_of_runs_and_leaves_the_rest_rows() {
        let crm = [Some(1), Some(2), Some(3), None, Some(70)];
        let ext = [Some(10), Some(11), Some(12), Some(13), Some(14)];
        let shadows: [&[u8]; 5] = [b"a", b"b", b"c", b"d", b"e"];
        let (blocks, in_block) = split(&crm, &ext, &shadows, 8);
        assert_eq!(in_block, vec![true, true, true, false, false]);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].bounds, [1, 3, 10, 12]);
        assert_eq!(blocks[0].crm, vec![1, 2, 3]);
        assert_eq!(blocks[0].external, vec![10, 11, 12]);
        assert_eq!(blocks[0].shadows, shadows[..3].to_vec());
    }

    #[test]
    fn keys_in_few_buckets_are_read_by_bucket() {
        let page: Vec<i64> = (1_000..6_000).collect();
        assert_eq!(dense_buckets("crm", &page).map(|b| b.len()), Some(79));
        assert_eq!(dense_buckets("external", &page).map(|b| b.len()), Some(40));
        let scattered: Vec<i64> = (0..1_000).map(|i| i * 1_000).collect();
        assert_eq!(dense_buckets("crm", &scattered), None);
        assert_eq!(dense_buckets("external", &[]), Some(vec![]));
    }

    #[test]
    fn blocks_hold_fewer_links_as_shadows_grow() {
        assert_eq!(links_per_block(8), CRM_BUCKET);
        assert_eq!(links_per_block(200), 33);
        assert_eq!(links_per_block(100_000), BLOCK_MIN);
        let crm: Vec<Option<i64>> = (0..64).map(Some).collect();
        assert_eq!(runs(&crm, &crm, 33), vec![0..33, 33..64]);
    }
}
