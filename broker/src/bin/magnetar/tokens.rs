//! `magnetar tokens`: Pulsar's `bin/pulsar tokens` verbs. Keys and tokens are the same as
//! Pulsar's tool makes for the same key (HS256 with raw secret bytes; RS256/ES256 with a PKCS#8
//! private key and an X.509 public key in DER; `sub` and `exp` claims; base64url without
//! padding), so each side validates what the other creates.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use magnetar_broker::security::token::{self, KeyPairKind, SigningKey, TokenValidator};

#[derive(clap::Subcommand)]
pub enum TokensCommand {
    /// A new HS256 secret key (32 random bytes).
    CreateSecretKey {
        /// Where to write it [default: standard output].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write the key in base64 instead of raw bytes.
        #[arg(short, long)]
        base64: bool,
        /// Only HS256 is made (Pulsar's default).
        #[arg(short = 'a', long, default_value = "HS256")]
        signature_algorithm: String,
    },
    /// A new key pair: PKCS#8 private key and X.509 public key, both DER.
    CreateKeyPair {
        /// RS256 (default) or ES256.
        #[arg(short = 'a', long, default_value = "RS256")]
        signature_algorithm: String,
        #[arg(long)]
        output_private_key: PathBuf,
        #[arg(long)]
        output_public_key: PathBuf,
    },
    /// A token for a role, signed with a secret key or a private key.
    Create {
        /// The role (the `sub` claim).
        #[arg(short, long)]
        subject: String,
        /// How long the token is valid (`30s`, `10m`, `2h`, `1d`, `1w`, `1y`) [default: forever].
        #[arg(short, long)]
        expiry_time: Option<String>,
        /// The secret key: `file:///path`, `data:;base64,...`, a path, or base64.
        #[arg(long, conflicts_with = "private_key", required_unless_present = "private_key")]
        secret_key: Option<String>,
        /// The private key (PKCS#8, DER or PEM), given like the secret key.
        #[arg(long)]
        private_key: Option<String>,
        /// RS256, ES256, ... for a private key [default: the key's family's 256].
        #[arg(short = 'a', long)]
        signature_algorithm: Option<String>,
    },
    /// A token's header and claims, unchecked.
    Show {
        #[command(flatten)]
        token: TokenInput,
    },
    /// Checks a token's signature and expiry and prints its claims; exits 1 if it is invalid.
    Validate {
        #[command(flatten)]
        token: TokenInput,
        #[arg(long, conflicts_with = "public_key", required_unless_present = "public_key")]
        secret_key: Option<String>,
        #[arg(long)]
        public_key: Option<String>,
    },
}

/// A token on the command line, in a file, or on standard input.
#[derive(clap::Args)]
pub struct TokenInput {
    /// The token.
    #[arg(short = 'i', long = "token", conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the token.
    #[arg(short = 'f', long)]
    token_file: Option<PathBuf>,
}

impl TokenInput {
    fn read(&self) -> anyhow::Result<String> {
        let text = match (&self.token, &self.token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).with_context(|| format!("read the token file {}", path.display()))?
            }
            (None, None) => {
                let mut text = String::new();
                std::io::stdin().take(token::MAX_TOKEN_LEN as u64 + 1).read_to_string(&mut text)?;
                text
            }
        };
        Ok(text.trim().to_owned())
    }
}

fn write_out(output: Option<&PathBuf>, bytes: &[u8]) -> anyhow::Result<()> {
    match output {
        Some(path) => std::fs::write(path, bytes).with_context(|| format!("write {}", path.display())),
        None => {
            let mut stdout = std::io::stdout();
            stdout.write_all(bytes)?;
            Ok(stdout.flush()?)
        }
    }
}

pub fn run(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::CreateSecretKey { output, base64, signature_algorithm } => {
            if signature_algorithm != "HS256" {
                bail!("--signature-algorithm {signature_algorithm}: only HS256 secret keys are made");
            }
            let key = token::create_secret_key();
            let bytes = if base64 { base64::engine::general_purpose::STANDARD.encode(&key).into_bytes() } else { key };
            write_out(output.as_ref(), &bytes)
        }
        TokensCommand::CreateKeyPair { signature_algorithm, output_private_key, output_public_key } => {
            let (kind, _) = KeyPairKind::from_algorithm(&signature_algorithm)?;
            if kind == KeyPairKind::Ec && signature_algorithm != "ES256" {
                bail!("--signature-algorithm {signature_algorithm}: EC keys are made for ES256 (P-256)");
            }
            let (private, public) = token::create_key_pair(kind)?;
            write_out(Some(&output_private_key), &private)?;
            write_out(Some(&output_public_key), &public)
        }
        TokensCommand::Create { subject, expiry_time, secret_key, private_key, signature_algorithm } => {
            let expiry = expiry_time
                .as_deref()
                .map(token::parse_duration)
                .transpose()
                .map_err(|error| anyhow::anyhow!("--expiry-time {error}"))?;
            let key = match (secret_key, private_key) {
                (Some(secret), _) => SigningKey::secret(&secret)?,
                (None, Some(private)) => SigningKey::private(&private, signature_algorithm.as_deref())?,
                (None, None) => bail!("give --secret-key or --private-key"),
            };
            println!("{}", token::create_token(&key, &subject, expiry)?);
            Ok(())
        }
        TokensCommand::Show { token: input } => {
            let (header, claims) = token::show(&input.read()?)?;
            println!("{header}\n---\n{claims}");
            Ok(())
        }
        TokensCommand::Validate { token: input, secret_key, public_key } => {
            let validator = match (secret_key, public_key) {
                (Some(secret), _) => TokenValidator::with_secret_key(&secret)?,
                (None, Some(public)) => TokenValidator::with_public_key(&public)?,
                (None, None) => bail!("give --secret-key or --public-key"),
            };
            let token = input.read()?;
            validator.validate(&token)?;
            let (_, claims) = token::show(&token)?;
            println!("{claims}");
            Ok(())
        }
    }
}
