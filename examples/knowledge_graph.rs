//! Knowledge graph: Agent, ConceptualSpaces, Graph and Document domains.
//!
//! 1. **document** publishes `document.uploaded` with the document's text;
//! 2. **agent** analyses it: tokenises, drops stop words, keeps the most frequent terms as
//!    concepts (`agent.concepts_extracted`);
//! 3. **conceptual_spaces** places each concept in a 64-dimensional space of hashed character
//!    bigrams (`conceptual_spaces.concept_placed`), so that related word forms lie close together;
//! 4. **graph** adds a node per concept (`graph.node_added`) and connects it to every earlier node
//!    whose cosine similarity is at least 0.6 (`graph.edge_added`);
//! 5. **document** records the analysis (`document.analyzed`).
//!
//! ```text
//! cargo run --example knowledge_graph
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example knowledge_graph
//! ```

#[path = "support/mod.rs"]
mod support;

use cim_integrate::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Audit, Error, short};

typed_id! {
    /// A document.
    pub struct DocumentId;
}

/// Dimensions of the conceptual space.
const DIMENSIONS: usize = 64;
/// Concepts at least this similar are connected.
const SIMILARITY_THRESHOLD: f64 = 0.6;

#[domain_event(subject = "document.uploaded", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentUploaded {
    pub document_id: DocumentId,
    pub title: String,
    pub text: String,
}

#[domain_event(subject = "agent.concepts_extracted", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ConceptsExtracted {
    pub document_id: DocumentId,
    /// (concept, occurrences), most frequent first.
    pub concepts: Vec<(String, u32)>,
}

#[domain_event(subject = "conceptual_spaces.concept_placed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ConceptPlaced {
    pub document_id: DocumentId,
    pub concept: String,
    pub coordinates: Vec<f64>,
}

#[domain_event(subject = "graph.node_added", version = "1.0")]
#[derive(Debug, Clone)]
pub struct NodeAdded {
    pub concept: String,
}

#[domain_event(subject = "graph.edge_added", version = "1.0")]
#[derive(Debug, Clone)]
pub struct EdgeAdded {
    pub from: String,
    pub to: String,
    pub similarity: f64,
}

#[domain_event(subject = "document.analyzed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentAnalyzed {
    pub document_id: DocumentId,
    pub concepts: u32,
}

// ---- agent: concept extraction -------------------------------------------------------------

const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "in", "is", "it", "its", "of", "on", "or",
    "that", "the", "their", "they", "this", "to", "was", "were", "will", "with", "we", "our", "each", "all",
];

/// The `limit` most frequent non-stop-words of at least four letters (ties: alphabetical).
pub fn extract_concepts(text: &str, limit: usize) -> Vec<(String, u32)> {
    let mut counts: HashMap<String, u32> = HashMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).map(str::to_lowercase) {
        if word.len() >= 4 && !STOP_WORDS.contains(&word.as_str()) {
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(limit);
    v
}

struct AgentService;

#[handlers(domain = "agent")]
impl AgentService {
    #[subscribe("document.uploaded")]
    async fn analyse(&self, ctx: &Context, event: DocumentUploaded) -> Result<(), HandlerError> {
        let concepts = extract_concepts(&event.text, 12);
        ctx.publish(&ConceptsExtracted {
            document_id: event.document_id,
            concepts,
        })
        .await?;
        Ok(())
    }
}

// ---- conceptual spaces: placement ----------------------------------------------------------

/// A concept's coordinates: counts of its character bigrams hashed (FNV-1a) into `DIMENSIONS`
/// buckets, normalised to unit length. Word forms sharing most bigrams lie close together.
pub fn place(concept: &str) -> Vec<f64> {
    let chars: Vec<char> = format!("^{concept}$").chars().collect();
    let mut v = vec![0.0; DIMENSIONS];
    for pair in chars.windows(2) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for c in pair {
            h ^= *c as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        v[(h % DIMENSIONS as u64) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Cosine similarity of two unit vectors.
pub fn similarity(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

struct ConceptualSpaceService;

#[handlers(domain = "conceptual_spaces")]
impl ConceptualSpaceService {
    #[subscribe("agent.concepts_extracted")]
    async fn place_concepts(&self, ctx: &Context, event: ConceptsExtracted) -> Result<(), HandlerError> {
        for (concept, _) in event.concepts {
            let coordinates = place(&concept);
            ctx.publish(&ConceptPlaced {
                document_id: event.document_id,
                concept,
                coordinates,
            })
            .await?;
        }
        Ok(())
    }
}

// ---- graph ---------------------------------------------------------------------------------

/// The graph domain's state.
#[derive(Default)]
pub struct Graph {
    pub nodes: Vec<(String, Vec<f64>)>,
    pub edges: Vec<(String, String, f64)>,
}

struct GraphService {
    graph: Arc<Mutex<Graph>>,
}

#[handlers(domain = "graph")]
impl GraphService {
    /// Ordered: nodes are added one at a time, so every pair is compared exactly once.
    #[subscribe("conceptual_spaces.concept_placed", ordered = true)]
    async fn add_node(&self, ctx: &Context, event: ConceptPlaced) -> Result<(), HandlerError> {
        let edges: Vec<(String, f64)> = {
            let mut g = self.graph.lock().unwrap();
            if g.nodes.iter().any(|(n, _)| *n == event.concept) {
                return Ok(());
            }
            let edges = g
                .nodes
                .iter()
                .map(|(n, c)| (n.clone(), similarity(c, &event.coordinates)))
                .filter(|(_, s)| *s >= SIMILARITY_THRESHOLD)
                .collect::<Vec<_>>();
            g.nodes.push((event.concept.clone(), event.coordinates.clone()));
            for (to, s) in &edges {
                g.edges.push((event.concept.clone(), to.clone(), *s));
            }
            edges
        };
        ctx.publish(&NodeAdded {
            concept: event.concept.clone(),
        })
        .await?;
        for (to, similarity) in edges {
            ctx.publish(&EdgeAdded {
                from: event.concept.clone(),
                to,
                similarity,
            })
            .await?;
        }
        Ok(())
    }
}

// ---- document ------------------------------------------------------------------------------

struct DocumentService;

#[handlers(domain = "document")]
impl DocumentService {
    #[subscribe("agent.concepts_extracted")]
    async fn record_analysis(&self, ctx: &Context, event: ConceptsExtracted) -> Result<(), HandlerError> {
        let concepts = u32::try_from(event.concepts.len()).unwrap_or(u32::MAX);
        ctx.publish(&DocumentAnalyzed {
            document_id: event.document_id,
            concepts,
        })
        .await?;
        Ok(())
    }
}

const TEXT: &str = "Suppliers send invoices. Each invoice names the supplier and the order; orders come from \
    supplier contracts, and each contract fixes prices. An invoice that matches its order is approved for \
    payment. Payments run weekly: one payment settles the approved invoices of a supplier. Suppliers whose \
    invoices miss an order, or whose contracts expired, get a letter; contract renewals create new orders, \
    and payments follow the invoices.";

async fn run<T: Transport>(t: T) -> Result<Graph, Error> {
    let domains = ["document", "agent", "conceptual_spaces", "graph"];
    let audit = Audit::new(&domains);
    let graph = Arc::new(Mutex::new(Graph::default()));
    let service = Service::builder(t.clone(), "knowledge")
        .register(AgentService)
        .register(ConceptualSpaceService)
        .register(GraphService { graph: graph.clone() })
        .register(DocumentService)
        .register(audit.clone())
        .start()
        .await?;
    let document_id = DocumentId::new();
    let upload = DocumentUploaded {
        document_id,
        title: "Accounts payable".into(),
        text: TEXT.into(),
    };
    println!("document {} uploaded", short(document_id));
    t.publish_and_wait(upload.to_envelope()?.into()).await?;
    audit.wait_for("document.analyzed", Duration::from_secs(10)).await?;
    // Wait until the graph has taken in every placed concept.
    let expected = extract_concepts(TEXT, 12).len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while graph.lock().unwrap().nodes.len() < expected {
        if tokio::time::Instant::now() > deadline {
            return Err("the graph did not receive every concept".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    audit.wait_for("graph.node_added", Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await; // let the trace of the last edges print
    service.shutdown(Duration::from_secs(5)).await;
    let g = std::mem::take(&mut *graph.lock().unwrap());
    println!("graph: {} concepts, {} similarity edges", g.nodes.len(), g.edges.len());
    for (from, to, s) in &g.edges {
        println!("  {from:>12} -- {to:<12} similarity {s:.2}");
    }
    Ok(g)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let transport = AnyTransport::from_env().await?;
    println!("knowledge graph on the {} transport", transport.kind());
    run(transport).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(g: &Graph) {
        let names: Vec<&str> = g.nodes.iter().map(|(n, _)| n.as_str()).collect();
        for c in ["invoices", "invoice", "payment", "payments", "suppliers", "supplier"] {
            assert!(names.contains(&c), "{c} missing from {names:?}");
        }
        let connected = |a: &str, b: &str| g.edges.iter().any(|(x, y, _)| (x == a && y == b) || (x == b && y == a));
        for (a, b) in [
            ("invoice", "invoices"),
            ("payment", "payments"),
            ("supplier", "suppliers"),
            ("order", "orders"),
            ("contract", "contracts"),
        ] {
            assert!(connected(a, b), "{a} -- {b} missing from {:?}", g.edges);
        }
        assert!(!connected("invoice", "payment"));
        assert_eq!(g.edges.len(), 5, "only related word forms are connected: {:?}", g.edges);
    }

    #[test]
    fn similarity_is_real() {
        assert!(similarity(&place("invoice"), &place("invoices")) > 0.8);
        assert!(similarity(&place("invoice"), &place("contract")) < 0.4);
        assert!((similarity(&place("order"), &place("order")) - 1.0).abs() < 1e-9);
        assert_eq!(
            extract_concepts("the cats and the cats and a dog", 2),
            [("cats".to_owned(), 2)]
        );
    }

    #[tokio::test]
    async fn builds_the_graph_on_the_embedded_transport() {
        check(&run(MemoryTransport::new()).await.expect("run"));
    }

    #[tokio::test]
    async fn builds_the_graph_on_nats_with_identity_headers() {
        support::run_on_nats_checking_headers(&["document", "agent", "conceptual_spaces", "graph"], |t| async move {
            check(&run(t).await?);
            Ok(())
        })
        .await;
    }
}
