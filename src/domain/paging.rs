//! Paging of the admin listings (users, audit log): by `offset`, as the seed's clients page, or
//! by keyset, where a page token names the last row of the previous page and the next page is
//! the rows past it in the listing's order. A keyset page costs the same at any depth (an index
//! seek), and pages asked that way see every row that exists throughout exactly once, whatever
//! is inserted or deleted between them; an offset page costs the rows it skips, and shifts when
//! rows before it come or go. Every page, asked either way, carries the next page's token (none
//! on the last), so a client pages to the end without a count; the count of all matches is
//! opt-in (`include_total`), because it costs every match where a page costs its own rows.
//!
//! A token is the listing's letter and the last row's key in decimal (`u1234`, `a98765`; the
//! audit log in time order, `t<seconds>.<nanoseconds>_<id>`): opaque to clients (they pass back
//! what an answer gave), exact to check, and tied to one listing.

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

pub const PAGE_DEFAULT: i64 = 50;
pub const PAGE_MAX: i64 = 200;
/// Most digits of the id in a token: any 18-digit number fits an `i64`.
pub const TOKEN_ID_DIGITS: usize = 18;
/// Most digits of the seconds in a time token: 12 reach the year 33,658 either way of 1970,
/// all of which chrono holds.
const TOKEN_SECONDS_DIGITS: usize = 12;

/// A listing that pages by keyset, and the letter its tokens start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Users by id, ascending: a page starts after the token's id.
    Users,
    /// Audit rows by id, descending (newest first): a page starts below the token's id.
    Audit,
    /// Audit rows by time, then id, descending (newest first): the listing of a time range,
    /// whose page an index on (created_at, id) serves at any distance from now. A page starts
    /// below the token's (time, id).
    AuditByTime,
}

/// The key of a row in its listing's order: its id, and its time in the listings by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub id: i64,
    pub at: Option<DateTime<Utc>>,
}

impl Cursor {
    pub const fn id(id: i64) -> Self {
        Self { id, at: None }
    }
}

impl Listing {
    pub const fn letter(self) -> char {
        match self {
            Self::Users => 'u',
            Self::Audit => 'a',
            Self::AuditByTime => 't',
        }
    }

    /// The audit log's listing for a query: by time when it bounds the time.
    pub const fn audit(by_time: bool) -> Self {
        if by_time { Self::AuditByTime } else { Self::Audit }
    }

    /// The token of a page that starts past `last`.
    pub fn token(self, last: Cursor) -> String {
        match (self, last.at) {
            (Self::AuditByTime, Some(at)) => {
                format!("{}{}.{:09}_{}", self.letter(), at.timestamp(), at.timestamp_subsec_nanos(), last.id)
            }
            _ => format!("{}{}", self.letter(), last.id),
        }
    }

    /// The regular expression of this listing's tokens, without anchors.
    fn token_regex(self) -> String {
        let id = format!("(0|[1-9][0-9]{{0,{}}})", TOKEN_ID_DIGITS - 1);
        match self {
            Self::AuditByTime => {
                format!("{}(0|-?[1-9][0-9]{{0,{}}})\\.[0-9]{{9}}_{id}", self.letter(), TOKEN_SECONDS_DIGITS - 1)
            }
            _ => format!("{}{id}", self.letter()),
        }
    }

    /// The regular expression of the tokens of any of `listings` (the requests that may be
    /// answered by several), or the empty string (the first page).
    pub fn token_pattern(listings: &[Self]) -> String {
        let any: Vec<String> = listings.iter().map(|l| l.token_regex()).collect();
        format!("^({})?$", any.join("|"))
    }

    /// The key a token names; `None` for anything a listing of this kind never gave.
    fn parse_token(self, token: &str) -> Option<Cursor> {
        let rest = token.strip_prefix(self.letter())?;
        if self != Self::AuditByTime {
            return Some(Cursor::id(decimal(rest, TOKEN_ID_DIGITS, false)?));
        }
        let (seconds, rest) = rest.split_once('.')?;
        let (nanos, id) = rest.split_once('_')?;
        let seconds = decimal(seconds, TOKEN_SECONDS_DIGITS, true)?;
        let nanos = (nanos.len() == 9 && nanos.bytes().all(|b| b.is_ascii_digit())).then(|| nanos.parse().ok())??;
        let at = DateTime::from_timestamp(seconds, nanos)?;
        Some(Cursor { id: decimal(id, TOKEN_ID_DIGITS, false)?, at: Some(at) })
    }
}

/// A canonical decimal of at most `digits` digits (no sign, no leading zero; a `-` before a
/// non-zero one when `signed`).
fn decimal(text: &str, digits: usize, signed: bool) -> Option<i64> {
    let unsigned = if signed { text.strip_prefix('-').filter(|d| !d.starts_with('0')).unwrap_or(text) } else { text };
    let canonical = unsigned == "0" || (!unsigned.starts_with('0') && unsigned.len() <= digits);
    (canonical && !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())?
}

/// A checked page request: `limit` in 1..=[`PAGE_MAX`], then skip `offset` rows, past the row
/// `after` (in the listing's order) when given; and whether to count the matches of all pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
    pub after: Option<Cursor>,
    pub include_total: bool,
}

impl Page {
    /// Checks `limit` (0 means [`PAGE_DEFAULT`]), `offset` and `token` (empty: none) of a request
    /// to `listing`. An offset beside a token skips rows past the token's (clients have no
    /// reason to: it costs the rows skipped again).
    pub fn parse(listing: Listing, limit: i64, offset: i64, token: &str, include_total: bool) -> Result<Self> {
        let (limit, offset) = page(limit, offset)?;
        if token.is_empty() {
            return Ok(Self { limit, offset, after: None, include_total });
        }
        let after = listing
            .parse_token(token)
            .ok_or_else(|| Error::invalid("page_token", "is not a next_page_token of this listing"))?;
        Ok(Self { limit, offset, after: Some(after), include_total })
    }

    /// Whether this page counts the matches of every page: when asked, and only without a token,
    /// because a count costs every match and a keyset page otherwise costs only its own rows.
    pub fn counts_total(self) -> bool {
        self.include_total && self.after.is_none()
    }
}

/// One page of a listing: its rows, the number of matches in all pages (when counted), and the
/// token of the next page (none on the last).
#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub rows: Vec<T>,
    pub total: Option<i64>,
    pub next_page_token: Option<String>,
}

impl<T> Paged<T> {
    /// From up to `page.limit + 1` rows fetched for `page`: the extra one only says that a next
    /// page exists (whether the page was asked by offset or by token). `key` gives a row's key
    /// in the listing's order.
    pub fn from_rows(
        listing: Listing,
        page: Page,
        mut rows: Vec<T>,
        total: Option<i64>,
        key: impl Fn(&T) -> Cursor,
    ) -> Self {
        let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > page.limit;
        rows.truncate(usize::try_from(page.limit).unwrap_or(usize::MAX));
        let next_page_token = rows.last().filter(|_| more).map(|last| listing.token(key(last)));
        Self { rows, total, next_page_token }
    }
}

/// Validates `limit` (0 means the default) and `offset` of a listing.
pub(crate) fn page(limit: i64, offset: i64) -> Result<(i64, i64)> {
    let limit = if limit == 0 { PAGE_DEFAULT } else { limit };
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Error::invalid("limit", "must be between 1 and 200"));
    }
    if offset < 0 {
        return Err(Error::invalid("offset", "must not be negative"));
    }
    Ok((limit, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(listings: &[Listing], token: &str) -> bool {
        regex::Regex::new(&Listing::token_pattern(listings)).unwrap().is_match(token)
    }

    #[test]
    fn tokens_round_trip_and_nothing_else_parses() {
        let at = |s, n| DateTime::from_timestamp(s, n);
        let keys = [
            (Listing::Users, Cursor::id(0)),
            (Listing::Users, Cursor::id(1)),
            (Listing::Audit, Cursor::id(999_999_999_999_999_999)),
            (Listing::AuditByTime, Cursor { id: 7, at: at(1_764_500_000, 123_456_789) }),
            (Listing::AuditByTime, Cursor { id: 0, at: at(0, 0) }),
            (Listing::AuditByTime, Cursor { id: 12, at: at(-999_999_999_999, 5) }),
            (Listing::AuditByTime, Cursor { id: 12, at: at(999_999_999_999, 999_999_999) }),
        ];
        for (listing, key) in keys {
            let token = listing.token(key);
            assert!(matches(&[listing], &token), "{token}");
            assert_eq!(Page::parse(listing, 0, 0, &token, false).unwrap().after, Some(key), "{token}");
        }
        assert_eq!(Listing::AuditByTime.token(Cursor { id: 7, at: at(1, 5) }), "t1.000000005_7");
        let bad_users = ["u", "a1", "u01", "u-1", "u+1", "U1", " u1", "u1 ", "u1x", "u1000000000000000000", "u１"];
        let bad_times = [
            "a1",
            "t1_1",
            "t1.1_1",
            "t1.0000000001_1",
            "t01.000000000_1",
            "t-0.000000000_1",
            "t1.000000000_01",
            "t1.000000000_",
            "t.000000000_1",
            "t1000000000000.000000000_1",
            "t1.000000000_1000000000000000000",
            "t--1.000000000_1",
            "t1.00000000x_1",
            "t1,000000000_1",
        ];
        for (listing, bad) in [(Listing::Users, &bad_users[..]), (Listing::AuditByTime, &bad_times[..])] {
            for token in bad {
                let refused = Page::parse(listing, 0, 0, token, false).unwrap_err();
                assert!(
                    matches!(refused, Error::InvalidArgument { ref field, .. } if field == "page_token"),
                    "{token}"
                );
                assert!(!matches(&[listing], token), "{token}");
            }
        }
        assert!(matches(&[Listing::Audit, Listing::AuditByTime], "a7"));
        assert!(matches(&[Listing::Audit, Listing::AuditByTime], "t-7.000000000_7"));
        assert!(Page::parse(Listing::Audit, 0, 0, "t1.000000000_7", false).is_err(), "one listing's token only");
        assert_eq!(
            Page::parse(Listing::Audit, 0, 3, "a7", true).unwrap(),
            Page { limit: PAGE_DEFAULT, offset: 3, after: Some(Cursor::id(7)), include_total: true }
        );
        assert_eq!(
            Page::parse(Listing::Audit, 0, 3, "", false).unwrap(),
            Page { limit: PAGE_DEFAULT, offset: 3, after: None, include_total: false }
        );
    }

    #[test]
    fn counted_only_when_asked_without_a_token() {
        let page = |token: &str, include_total| Page::parse(Listing::Users, 0, 0, token, include_total).unwrap();
        assert!(page("", true).counts_total());
        assert!(!page("", false).counts_total());
        assert!(!page("u5", true).counts_total());
    }

    #[test]
    fn the_extra_row_only_says_more() {
        // An offset page too: the token after its last row continues it.
        let page = Page { limit: 2, offset: 10, after: None, include_total: false };
        let full = Paged::from_rows(Listing::Users, page, vec![4, 7, 9], Some(3), |r| Cursor::id(*r));
        assert_eq!((full.rows, full.next_page_token), (vec![4, 7], Some("u7".to_owned())));
        let last = Paged::from_rows(Listing::Users, page, vec![4, 7], None, |r| Cursor::id(*r));
        assert_eq!((last.rows, last.next_page_token), (vec![4, 7], None));
    }
}
