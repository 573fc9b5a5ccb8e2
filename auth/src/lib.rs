//! Credentials that brokers, bookies and the tools share: [`token`], JSON Web Tokens as
//! Pulsar makes and checks them (keys in Pulsar's formats, `magnetar tokens`), and
//! [`credential`], the token one Magnetar process presents to another. A leaf crate, so that a
//! bookie checks a broker's token with the same code a broker checks a client's.

pub mod credential;
pub mod token;
