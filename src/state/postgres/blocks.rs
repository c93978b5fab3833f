//! Link blocks: the links a backfill creates, many to a row.
//!
//! A backfill links every row it copies, and a row of `links` per link
//! costs two B-tree entries besides the tuple: on PostgreSQL that was most
//! of what a backfill spent beyond the copy itself. So a backfill stores
//! runs of its fresh links as blocks instead: up to [`BLOCK_LINKS`] links
//! whose CRM keys and external keys both ascend (keys from a sequence or
//! an identity do; random keys such as uuids do not, and stay rows), with
//! the key ranges they span. A GiST index on each range finds the blocks
//! that can hold a key; the key's place in the block's array gives the
//! link.
//!
//! A block is never rewritten. A row of `links` for one of its CRM keys
//! overrides its entry: every link write first copies the block entries
//! of the keys it touches into `links` (`materialize_in`), so that the
//! unique keys of `links` keep guarding both sides exactly as before, and
//! a link that changes lives on as a row. The view `all_links` shows both
//! as one table.

use crate::db::postgres::quote;
use std::ops::Range;
use tokio_postgres::GenericClient;

/// Links in a block, at most.
pub(crate) const BLOCK_LINKS: usize = 128;
/// Fewer links than this stay rows.
pub(crate) const BLOCK_MIN: usize = 2;
/// A block's keys on either side span at most this many times as many
/// values as it holds links: keys drawn from a sequence by a few writers
/// at once stay far below it, and no block's range reaches over many
/// others' (a probe then finds one block or two).
const SPAN_PER_LINK: i128 = 64;

/// The runs of links (by place) that go into blocks: integer keys on both
/// sides, both strictly ascending and dense (see [`SPAN_PER_LINK`]), at
/// most [`BLOCK_LINKS`] and at least [`BLOCK_MIN`] of them. Any other key
/// (text, uuid, a key out of order) stays a row.
pub(crate) fn runs(crm: &[Option<i64>], external: &[Option<i64>]) -> Vec<Range<usize>> {
    let n = crm.len().min(external.len());
    let mut out = Vec::new();
    let mut start = 0;
    let ascends = |keys: &[Option<i64>], i: usize| match (keys[i - 1], keys[i]) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    };
    let dense =
        |keys: &[Option<i64>], r: &Range<usize>, len: usize| match (keys[r.start], keys[r.end - 1])
        {
            (Some(lo), Some(hi)) => i128::from(hi) - i128::from(lo) < SPAN_PER_LINK * len as i128,
            _ => false,
        };
    for i in 1..=n {
        let ends = i == n
            || i - start == BLOCK_LINKS
            || !ascends(crm, i)
            || !ascends(external, i)
            || !dense(crm, &(start..i + 1), i + 1 - start)
            || !dense(external, &(start..i + 1), i + 1 - start);
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

/// A block bound or probe: the entity's name, a zero byte, then the key,
/// so that one index serves every entity and their ranges never meet (a
/// name holds no zero byte).
pub(crate) fn probe(entity: &str, key: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(entity.len() + 1 + key.len());
    p.extend_from_slice(entity.as_bytes());
    p.push(0);
    p.extend_from_slice(key);
    p
}

/// SQL for the live block entries (`crm_key`, `external_key`, `shadow`)
/// of entity `$entity` whose `side` key (`crm` or `external`) is one of
/// the keys in `$keys`, whose probes are `$probes` in the same order.
pub(crate) fn entries_sql(s: &str, side: &str, entity: u8, keys: u8, probes: u8) -> String {
    format!(
        "SELECT b.crm_keys[i] AS crm_key, b.external_keys[i] AS external_key, \
                b.shadows[i] AS shadow \
           FROM unnest(${keys}::bytea[], ${probes}::bytea[]) AS k(key, probe) \
           JOIN {s}.link_blocks b \
             ON {s}.key_range(b.{side}_lo, b.{side}_hi, '[]') @> k.probe \
          CROSS JOIN LATERAL array_position(b.{side}_keys, k.key) AS i \
          WHERE i IS NOT NULL AND b.entity = ${entity} \
            AND NOT EXISTS (SELECT 1 FROM {s}.links l \
                             WHERE l.entity = ${entity} AND l.crm_key = b.crm_keys[i])"
    )
}

/// Copies into `links` the live block entries of `entity` that hold one
/// of `crm` (CRM keys) or `external` (external keys), all in stored form,
/// so that a write to those links finds them there.
pub(crate) async fn materialize_in<C: GenericClient>(
    client: &C,
    schema: &str,
    entity: &str,
    crm: &[Vec<u8>],
    external: &[Vec<u8>],
) -> Result<(), tokio_postgres::Error> {
    let s = quote(schema);
    let probes =
        |keys: &[Vec<u8>]| -> Vec<Vec<u8>> { keys.iter().map(|k| probe(entity, k)).collect() };
    let sql = format!(
        "INSERT INTO {s}.links (entity, crm_key, external_key, shadow) \
         SELECT $1, crm_key, external_key, shadow FROM ({} UNION {}) AS m \
         ON CONFLICT DO NOTHING",
        entries_sql(&s, "crm", 1, 2, 3),
        entries_sql(&s, "external", 1, 4, 5),
    );
    client
        .execute(
            &sql,
            &[&entity, &crm, &probes(crm), &external, &probes(external)],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(crm: &[i64], ext: &[i64]) -> Vec<Range<usize>> {
        let c: Vec<Option<i64>> = crm.iter().copied().map(Some).collect();
        let x: Vec<Option<i64>> = ext.iter().copied().map(Some).collect();
        runs(&c, &x)
    }

    #[test]
    fn ascending_keys_go_in_full_blocks_and_the_rest_in_a_last_one() {
        let crm: Vec<i64> = (0..300).map(|i| i * 3).collect();
        let ext: Vec<i64> = (0..300).map(|i| 1000 + i * 2).collect();
        assert_eq!(plan(&crm, &ext), vec![0..128, 128..256, 256..300]);
    }

    #[test]
    fn a_key_that_does_not_ascend_ends_a_block() {
        let crm: Vec<i64> = (0..100).collect();
        let mut ext: Vec<i64> = (0..100).map(|i| 10 * i).collect();
        ext[40] = 385; // below its neighbour: the block ends before it
        assert_eq!(plan(&crm, &ext), vec![0..40, 40..100]);
        // Equal neighbours cannot share a block either.
        let mut crm2 = crm.clone();
        crm2[70] = crm2[69];
        assert_eq!(plan(&crm2, &crm), vec![0..70, 70..100]);
    }

    #[test]
    fn sparse_random_and_lone_keys_stay_rows() {
        let crm: Vec<i64> = (0..200).collect();
        // A pseudo-random permutation: short runs over wide ranges.
        let ext: Vec<i64> = (0..200i64)
            .map(|i| (i * 2_654_435_761) % 4_294_967_291)
            .collect();
        assert!(plan(&crm, &ext).is_empty(), "{:?}", plan(&crm, &ext));
        // Ascending but far apart: each block would span the others.
        let wide: Vec<i64> = (0..200).map(|i| i * 1_000).collect();
        assert!(plan(&crm, &wide).is_empty());
        assert!(plan(&[7], &[9]).is_empty());
        assert_eq!(plan(&[7, 8], &[9, 12]), vec![0..2]);
    }

    #[test]
    fn a_key_that_is_not_an_integer_stays_a_row() {
        let crm: Vec<Option<i64>> = (0..10).map(Some).collect();
        let mut ext = crm.clone();
        ext[5] = None;
        assert_eq!(runs(&crm, &ext), vec![0..5, 6..10]);
    }

    #[test]
    fn probes_keep_entities_apart() {
        let a = probe("company", &[0x15, 0xff]);
        let b = probe("company2", &[0x15, 0x00]);
        let c = probe("compan", &[0x79]);
        // Every key of "company" sorts between its entity's bounds and
        // outside any other entity's, however the names share a prefix.
        assert!(c < a && a < b, "{c:x?} {a:x?} {b:x?}");
    }
}
